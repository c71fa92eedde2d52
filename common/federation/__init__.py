"""Framework-free pieces of the federation that the server and the sites share.

- `config`: the run-config schema (`FedConfig`, kebab-case keys as in
  pyproject's ``[tool.flwr.app.config]``) and its validation;
- `partition`: how a target domain's train split is dealt out to simulated sites;
- `trainable`: which student parameters train and travel, and their bytes;
- `payload`: the arrays of the teacher broadcast (heads + anchor embeddings);
- `site_budget`: a site's own privacy settings, ledger, planned spending and refusal;
- `local_round`: one site's local training round (record-level DP-SGD or plain);
- `validation`: the server's checks of an update before it is aggregated;
- `outbound`: what may leave a site (array names and shapes, metric keys).

Nothing here imports Flower, `client/`, `server/` or `simulations/`.
"""
