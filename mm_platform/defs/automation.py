"""Automation conditions shared by the global assets."""

import dagster as dg

RECLUSTER_CRON = "0 3 * * *"
#: Global assets that summarise clusters follow any change at once.
GLOBAL_AUTOMATION = dg.AutomationCondition.eager()
#: The full re-cluster (and the models fitted with it): nightly, and the first time data exists.
#: (`on_missing()` would not do: the asset is already missing at the automation sensor's first evaluation,
#: which counts as handled, so it never fires.)
RECLUSTER_AUTOMATION = dg.AutomationCondition.on_cron(RECLUSTER_CRON) | (
    dg.AutomationCondition.eager() & dg.AutomationCondition.missing()
).with_label("first_clustering")
