"""The registry side of clickstream: what a registered version of `clickstream-buy-intent` holds and
how the `champion` alias moves.

- decision: what to do with the alias, from evidence alone (pure: no MLflow, no lake, no clock);
- store: the one adapter to MLflow's registry (client, versions, aliases, tags, claims, decision records);
- loading: a registered model read back as a ModelBundle, its weights checked;
- packaging: a trained model logged as the pyfunc that a version holds;
- champion: the gate, promote and rollback, gathering the evidence and recording the decision.
"""
