"""A site's own settings: which share of the data it holds, where its state lives, its own budget.

Read from the node config (``flower-supernode --node-config``, see
`client.supernode`), which is the site's own and wins over the run config the
server sends; see `site_budget` for what that means for the budget. Kept
apart from `site_budget` so that reading them does not load the accountant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.federation.config import ConfigError, FedConfig

UNIT_OF = {"record": "record", "site": "site"}


@dataclass
class SiteSettings:
    partition_id: int
    n_sites: int
    privacy: str
    state_dir: Path  # this site's own folder
    data_dir: str
    cache_dir: str
    backbone: str  # "" = as the server names it
    epsilon: float | None = None  # from the node config only
    delta: float | None = None  # from the node config only

    @property
    def site(self) -> str:
        return f"site-{self.partition_id}"

    def ledger_path(self) -> Path:
        return self.state_dir / f"ledger-{UNIT_OF[self.privacy]}.json"


def resolve_settings(node_config: Mapping[str, Any], cfg: FedConfig) -> SiteSettings:
    nc = dict(node_config or {})
    if "partition-id" not in nc:
        raise ConfigError("node config has no partition-id: this site does not know which share of the data it holds")
    pid = int(nc["partition-id"])
    n_sites = int(nc.get("num-partitions", cfg.sites))
    if n_sites != cfg.sites:
        raise ConfigError(f"the federation has {n_sites} nodes (num-partitions) but the run config says sites={cfg.sites}")
    privacy = str(nc.get("privacy", cfg.privacy))
    if privacy != cfg.privacy:
        raise ConfigError(f"this site requires privacy={privacy}, the run asks for privacy={cfg.privacy}; refusing")
    state = Path(str(nc["state-dir"])) if "state-dir" in nc else Path(cfg.state_dir) / f"site-{pid}"
    return SiteSettings(
        partition_id=pid, n_sites=n_sites, privacy=privacy, state_dir=state.expanduser(),
        data_dir=str(nc.get("data-dir", cfg.data_dir)), cache_dir=str(nc.get("cache-dir", cfg.cache_dir)),
        backbone=str(nc.get("backbone", "")),
        epsilon=float(nc["epsilon"]) if "epsilon" in nc else None,
        delta=float(nc["delta"]) if "delta" in nc else None)
