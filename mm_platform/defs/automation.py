"""Automation conditions shared by the global assets.

What follows new batches is the ``global_layer_sensor`` (``defs/jobs.py``): one run once no batch run is in
flight, at most one per batch run. Eager conditions are not used for that: they fire per asset as soon as
its own inputs change, which starts runs in the middle of a batch run and several runs per batch.
The declarative conditions here are the nightly cadence only.
"""

import dagster as dg

RECLUSTER_CRON = "0 3 * * *"
#: The full re-cluster (and the models fitted with it): nightly, once what it reads changed since the last
#: tick. The first clustering of a new data dir is requested by ``global_layer_sensor``.
RECLUSTER_AUTOMATION = dg.AutomationCondition.on_cron(RECLUSTER_CRON)
#: What summarises clusters (summaries, map, payloads, SQL marts) follows the nightly re-cluster: same cron,
#: so it runs once its inputs were all updated after the tick, i.e. after the re-cluster.
GLOBAL_AUTOMATION = dg.AutomationCondition.on_cron(RECLUSTER_CRON)
