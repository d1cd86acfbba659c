"""The paper's published numbers (Pan et al., EdgeViTs, ECCV 2022): the one place every command reads them.

`edgevit/data/paper.json` holds Tables 1-5 and Fig. 4 as printed, each table citing where in the paper it
comes from (see its `note`). `load_paper()` reads and checks it (or another file of the same format: a
missing or malformed field is one `DataError` naming the file, table, row and field), and the helpers
below give the views the commands need. Nothing here measures anything.
"""
from __future__ import annotations

import functools
import math
import os
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional

from .errors import DataError
from .utils.inputs import read_json

__all__ = ["FORMAT", "TABLES", "default_path", "load_paper", "rows", "by_timm_name", "table1", "published_top1",
           "load_peers", "peers_of"]

FORMAT = "edgevit-paper/2"
_NUM, _STR, _OPT_STR, _LIST = "number", "string", "string or null", "list"
# Each table's required row fields and their kinds: what the commands read.
TABLES: Dict[str, Dict[str, str]] = {
    "table1": {"model": _STR, "timm_name": _STR, "channels": _LIST, "blocks": _LIST, "heads": _LIST,
               "gflops": _NUM, "params_m": _NUM},
    "table2": {"model": _STR, "timm_name": _OPT_STR, "family": _STR, "params_m": _NUM, "gflops": _NUM,
               "latency_ms": _NUM, "latency_std_ms": _NUM, "top1": _NUM, "input_size": _NUM},
    "table3": {"model": _STR, "timm_name": _OPT_STR, "family": _STR, "top1": _NUM, "latency_ms": _NUM,
               "energy_mj": _NUM, "energy_std_mj": _NUM, "power_w": _NUM, "power_std_w": _NUM,
               "efficiency_pct_per_mj": _NUM},
    "table4": {"part": _STR, "variant": _STR, "ablation": _OPT_STR, "latency_ms": _NUM, "top1": _NUM},
    "table5": {"backbone": _STR},
    "fig4": {"backbone": _STR, "params_m": _NUM, "gflops_512": _NUM, "miou": _NUM},
}


def default_path() -> Path:
    return Path(str(resources.files("edgevit") / "data" / "paper.json"))


def _kind_ok(v, kind: str) -> bool:
    if kind == _NUM:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == _STR:
        return isinstance(v, str) and bool(v)
    if kind == _OPT_STR:
        return v is None or isinstance(v, str)
    return isinstance(v, list)


def _check(data, path: Path) -> dict:
    where = f"paper data {path}"
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object with 'format', 'citation' and 'tables'")
    if data.get("format") != FORMAT:
        raise DataError(f"{where}: 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(data.get("citation"), str) or not isinstance(data.get("tables"), dict):
        raise DataError(f"{where}: needs a 'citation' string and a 'tables' object")
    for name, fields in TABLES.items():
        table = data["tables"].get(name)
        if not isinstance(table, dict) or not isinstance(table.get("rows"), list) or not table["rows"]:
            raise DataError(f"{where}: table {name!r} is missing or has no 'rows'")
        if not isinstance(table.get("source"), str) or not table["source"]:
            raise DataError(f"{where}: table {name!r} has no 'source' (every number must cite where it is from)")
        for i, row in enumerate(table["rows"]):
            if not isinstance(row, dict):
                raise DataError(f"{where}: table {name!r} row {i} is not an object")
            for field, kind in fields.items():
                if field not in row:
                    raise DataError(f"{where}: table {name!r} row {i} ({row.get('model') or row.get('backbone')}) "
                                    f"has no field {field!r}")
                if not _kind_ok(row[field], kind):
                    raise DataError(f"{where}: table {name!r} row {i} ({row.get('model') or row.get('backbone')}): "
                                    f"{field} = {row[field]!r}, expected a {kind}")
    return data


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict:
    return _check(read_json(path, "paper data"), Path(path))


def load_paper(path: Optional[os.PathLike | str] = None) -> dict:
    """The checked paper data: the shipped file, or `path` (same format)."""
    return _load(str(Path(path) if path else default_path()))


def rows(table: str, paper: Optional[dict] = None) -> List[dict]:
    """Copies of a table's rows."""
    paper = paper or load_paper()
    return [dict(r) for r in paper["tables"][table]["rows"]]


def by_timm_name(table: str, paper: Optional[dict] = None) -> Dict[str, dict]:
    """{timm model name: row} for the rows of `table` that name a timm model."""
    return {r["timm_name"]: r for r in rows(table, paper) if r.get("timm_name")}


def table1(paper: Optional[dict] = None) -> Dict[str, dict]:
    """{edgevit_xxs|xs|s: Table 1 row} (the configurations and complexity the paper's text gives)."""
    return by_timm_name("table1", paper)


PEERS_FORMAT = "edgevit-peers/1"
# each peer row's fields and their kinds (`edgevit/data/peers.json`: every number cites its source)
PEER_FIELDS = {"model": _STR, "name": _STR, "top1": _NUM, "params_m": _NUM, "gmacs": _NUM, "img_size": _NUM,
               "epochs": _NUM, "source": _STR}


@functools.lru_cache(maxsize=4)
def _load_peers(path: str) -> dict:
    where = f"peer data {path}"
    data = read_json(path, "peer data")
    if not isinstance(data, dict) or data.get("format") != PEERS_FORMAT:
        raise DataError(f"{where}: expected a JSON object with 'format' {PEERS_FORMAT!r}")
    rows_ = data.get("rows")
    if not isinstance(rows_, list) or not rows_ or not isinstance(data.get("sizes"), dict):
        raise DataError(f"{where}: needs 'rows' (a list of peers) and 'sizes' (EdgeViT -> its peers)")
    for i, row in enumerate(rows_):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {i} is {row!r}, expected an object")
        for field, kind in PEER_FIELDS.items():
            if not _kind_ok(row.get(field), kind):
                raise DataError(f"{where}: row {i} ({row.get('model')}): {field} = {row.get(field)!r}, expected a "
                                f"{kind}")
        if not isinstance(row.get("distilled"), bool):
            raise DataError(f"{where}: row {i} ({row['model']}): distilled must be true or false")
    known = {r["model"] for r in rows_}
    for size, names in data["sizes"].items():
        unknown = [n for n in names if n not in known] if isinstance(names, list) else [names]
        if unknown:
            raise DataError(f"{where}: sizes[{size!r}] names {', '.join(map(str, unknown))}, which no row describes")
    return data


def load_peers(path: Optional[os.PathLike | str] = None) -> dict:
    """The checked peer data (`edgevit/data/peers.json`: today's mobile models at each EdgeViT size with their
    published top-1, each row citing its source), or `path` (same format)."""
    return _load_peers(str(Path(path) if path else Path(str(resources.files("edgevit") / "data" / "peers.json"))))


def peers_of(variant: Optional[str] = None, peers: Optional[dict] = None) -> List[str]:
    """The peers of one EdgeViT size (`edgevit_xxs` ...), or of every size in order (no variant)."""
    sizes = (peers or load_peers())["sizes"]
    return list(sizes[variant]) if variant else list(dict.fromkeys(n for names in sizes.values() for n in names))


def published_top1(paper: Optional[dict] = None, peers: Optional[dict] = None) -> Dict[str, dict]:
    """{timm name: {"top1", "name", "params_m", "source"}}: the paper's Table 2 first, then the peer data (today's
    models at each EdgeViT size, each row its source), then `other_top1` (other papers' numbers for models this
    paper does not list) for the rest."""
    paper = paper or load_paper()
    out: Dict[str, dict] = {}
    other = paper.get("other_top1") or {}
    for r in other.get("rows", []):
        out[r["model"]] = {"top1": r["top1"], "name": r.get("name", r["model"]), "params_m": r.get("params_m"),
                           "source": "other paper (see the paper data's other_top1)", "kind": "published"}
    for r in (peers or load_peers())["rows"]:
        out[r["model"]] = {"top1": r["top1"], "name": r["name"], "params_m": r["params_m"], "gmacs": r["gmacs"],
                           "img_size": r["img_size"], "distilled": r["distilled"], "source": r["source"],
                           "kind": "published"}
    for r in rows("table2", paper):
        if r["timm_name"]:
            out[r["timm_name"]] = {"top1": r["top1"], "name": r["model"], "params_m": r["params_m"],
                                   "gflops": r["gflops"], "source": paper["tables"]["table2"]["source"],
                                   "kind": "paper"}
    return out
