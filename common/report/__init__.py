"""The privacy audit: what a run spent, recomputed and explained, and an empirical lower bound.

- `run_reader`: a run folder's ledgers as per-site accounts;
- `recompute`: epsilon recomputed from each raw history by Opacus RDP and PRV, with consistency flags;
- `build` / `schema` / `wording`: ``audit.json`` (schema ``fedgckd-audit/1``);
- `plots` / `html` / `write`: the self-contained ``audit.html``;
- `provenance`: the code version of a run and of a report;
- `one_run` / `canaries` / `empirical` / `audit_inputs`: the one-run canary audit.

Nothing here imports client/, server/, simulations/ or flwr.
"""
