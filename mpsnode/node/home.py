"""A node home directory: genesis.json, config.toml, keys/ and the LMDB data directory."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from mpsnode.consensus.genesis import Genesis
from mpsnode.node.files import load_genesis

GIB = 1 << 30
DEFAULT_LISTEN = "127.0.0.1:7070"  # a home without config.toml, and a client given no --node


@dataclass(frozen=True, slots=True)
class Home:
    path: Path
    listen: str = DEFAULT_LISTEN
    data_dir: str = "data"
    map_size_gib: int = 64
    metrics: str = ""  # HOST:PORT of the Prometheus endpoint; empty: none
    l1: str = ""  # JSON-RPC URL of the L1 the chain settles on (settlement mode); empty: none given

    @classmethod
    def open(cls, path: str | Path) -> Home:
        path = Path(path)
        if not (path / "genesis.json").is_file():
            raise FileNotFoundError(
                f"{path} has no genesis.json: create one with `mpsnode init --home {path}`"
            )
        config = {}
        if (path / "config.toml").is_file():
            try:
                config = tomllib.loads((path / "config.toml").read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path / 'config.toml'}: {exc}") from None
        known = {"listen", "data_dir", "map_size_gib", "metrics", "l1"}
        unknown = sorted(config.keys() - known)
        if unknown:
            raise ValueError(f"{path / 'config.toml'}: unknown setting(s) {', '.join(unknown)}")
        return cls(path, **config)

    def genesis(self) -> Genesis:
        return load_genesis(self.path / "genesis.json")

    @property
    def data_path(self) -> Path:
        return self.path / self.data_dir

    @property
    def map_size(self) -> int:
        return self.map_size_gib * GIB

    def key_path(self, name: str) -> Path:
        return self.path / "keys" / f"{name}.json"

    def l1_key_path(self, name: str) -> Path:
        """The L1 key file of ``name`` (``keys/l1/NAME.json``)."""
        return self.path / "keys" / "l1" / f"{name}.json"
