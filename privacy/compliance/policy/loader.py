"""Load policy packs (TOML files of rules) from the built-in directory and user directories.

Search order: the shipped packs (``privacy/compliance/policy/packs``), then every directory in
``FEDGUARD_POLICY_PATH`` (``os.pathsep``-separated), then ``extra_dirs`` (e.g.
``<data-dir>/policy-packs``). A user pack with a built-in pack's name replaces it and is
enabled only when that name is selected; any other user pack is always enabled, which is what
"drop a .toml in the directory" means. Every defect is a one-line :class:`PolicyError` naming
the file, the rule and the fix.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from privacy.compliance.policy.errors import ExprError, PolicyError
from privacy.compliance.policy.expr import Expr, compile_expr
from privacy.compliance.policy.facts import MANIFEST_FACTS, NODE_FACTS, RUN_FACTS

__all__ = [
    "BUILTIN_DIR",
    "BUILTIN_PACKS",
    "ENV_VAR",
    "Pack",
    "Rule",
    "available_packs",
    "load_pack_file",
    "load_packs",
    "parse_pack",
    "parse_param_overrides",
]

BUILTIN_DIR = Path(__file__).with_name("packs")
BUILTIN_PACKS = ("baseline", "gdpr", "pipl", "cn-genai", "eu-ai-act")
ENV_VAR = "FEDGUARD_POLICY_PATH"
SEVERITIES = ("fail", "warn", "info")
SCOPES = ("run", "node")
LANGS = ("en", "zh")
MAX_RULES = 500
MAX_PACK_BYTES = 1_000_000
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_PID = re.compile(r"[A-Z]{1,4}[0-9]{1,4}")
RUN_FACTS_NAMES = frozenset(f"run.{n}" for n in RUN_FACTS)
MANIFEST_FACT_NAMES = frozenset(f"manifest.{n}" for n in MANIFEST_FACTS)
NODE_FACT_NAMES = frozenset(f"node.{n}" for n in NODE_FACTS)
_PACK_KEYS = {"name", "version", "title", "description", "applies"}
_RULE_KEYS = {
    "id", "pid", "title", "explain", "severity", "scope", "citation", "verified", "applies",
    "check",
}


@dataclass(frozen=True)
class Rule:
    """One rule: when ``applies`` holds, ``check`` must hold or the verdict is ``severity``."""

    id: str
    pid: str | None
    pack: str
    severity: str
    scope: str
    title: dict[str, str]
    explain: dict[str, str]
    citation: str
    applies: Expr
    check: Expr
    #: ISO date on which the citation was last checked against its primary source ("" = never).
    verified: str = ""


@dataclass(frozen=True)
class Pack:
    name: str
    version: str
    title: dict[str, str]
    path: Path
    builtin: bool
    params: dict[str, Any] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": dict(self.params)}


def _snake(key: str) -> str:
    return key.replace("-", "_")


def _param_value(where: str, value: Any) -> Any:
    scalar = (bool, int, float, str)
    if isinstance(value, scalar):
        return value
    if isinstance(value, list) and all(isinstance(v, scalar) for v in value) and len(value) < 100:
        return list(value)
    raise PolicyError(f"{where}: parameter must be a number, string, boolean or list of those")


def _lang_table(where: str, value: Any, required: bool = True) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise PolicyError(f'{where} must be a table with en and zh, e.g. {where}.en = "..."')
    out: dict[str, str] = {}
    for lang in LANGS:
        text = value.get(lang)
        if not isinstance(text, str) or not text.strip():
            if required:
                raise PolicyError(f"{where}.{lang} is missing; give the text in English and "
                                  "Chinese")
            text = ""
        out[lang] = " ".join(str(text).split())
    extra = set(value) - set(LANGS)
    if extra:
        raise PolicyError(f"{where} has unknown language(s) {sorted(extra)}; use en and zh")
    return out


def parse_pack(
    data: Mapping[str, Any], path: Path, builtin: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> Pack:
    """Validate a parsed pack TOML; `overrides` maps param names to new values."""
    src = path.name
    head = data.get("pack")
    if not isinstance(head, Mapping):
        raise PolicyError(f"{src}: missing [pack] table; add [pack] with name and version")
    name = head.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name != path.stem:
        raise PolicyError(
            f"{src}: [pack] name={name!r} must equal the file name {path.stem!r} "
            "(lowercase letters, digits, -)"
        )
    unknown = set(head) - _PACK_KEYS
    if unknown:
        raise PolicyError(f"{src}: [pack] has unknown key(s) {sorted(unknown)}; allowed: "
                          f"{sorted(_PACK_KEYS)}")
    version = head.get("version", "0")
    if not isinstance(version, str):
        raise PolicyError(f"{src}: [pack] version must be a string like \"2026.1\"")
    title = _lang_table(f"{src}: [pack] title", head.get("title", {}), required=False)
    extra_top = set(data) - {"pack", "params", "rule"}
    if extra_top:
        raise PolicyError(f"{src}: unknown top-level key(s) {sorted(extra_top)}; use [pack], "
                          "[params] and [[rule]]")

    raw_params = data.get("params", {})
    if not isinstance(raw_params, Mapping):
        raise PolicyError(f"{src}: [params] must be a table of name = value")
    params = {_snake(k): _param_value(f"{src}: param {k}", v) for k, v in raw_params.items()}
    for key, value in (overrides or {}).items():
        pname = _snake(key)
        if pname not in params:
            raise PolicyError(f"{src}: cannot override unknown parameter {key!r}; parameters: "
                              f"{', '.join(sorted(params)) or 'none'}")
        old = params[pname]
        value = _param_value(f"{src}: override {key}", value)
        if type(old) is not type(value) and not (
            isinstance(old, int | float) and isinstance(value, int | float)
            and not isinstance(value, bool) and not isinstance(old, bool)
        ):
            raise PolicyError(f"{src}: override {key}={value!r} must have the type of "
                              f"{old!r}")
        params[pname] = value
    param_names = {f"params.{p}" for p in params}

    pack_applies = head.get("applies", "True")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise PolicyError(f"{src}: no rules; add at least one [[rule]] table")
    if len(raw_rules) > MAX_RULES:
        raise PolicyError(f"{src}: more than {MAX_RULES} rules; split the pack")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules, start=1):
        rules.append(_parse_rule(src, name, index, raw, pack_applies, param_names, seen))
    return Pack(name, version, title, path, builtin, params, tuple(rules))


def _parse_rule(
    src: str, pack: str, index: int, raw: Any, pack_applies: Any, param_names: set[str],
    seen: set[str],
) -> Rule:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{src}: rule #{index} must be a [[rule]] table")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _RULE_ID.fullmatch(rid):
        raise PolicyError(f"{src}: rule #{index} needs id = \"P<n>.<short-name>\" (letters, "
                          "digits, . _ -)")
    where = f"{src}: rule {rid}"
    if rid in seen:
        raise PolicyError(f"{where}: duplicate rule id; give each rule its own id")
    seen.add(rid)
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: "
                          f"{sorted(_RULE_KEYS)}")
    pid = raw.get("pid")
    if pid is not None and (not isinstance(pid, str) or not _PID.fullmatch(pid)):
        raise PolicyError(f"{where}: pid={pid!r} must look like P10 (or be omitted)")
    severity = raw.get("severity")
    if severity not in SEVERITIES:
        raise PolicyError(f"{where}: severity={severity!r}; use one of {', '.join(SEVERITIES)}")
    scope = raw.get("scope", "node")
    if scope not in SCOPES:
        raise PolicyError(f"{where}: scope={scope!r}; use run (once per run) or node (per node)")
    citation = raw.get("citation")
    if not isinstance(citation, str) or not citation.strip():
        raise PolicyError(f"{where}: citation is missing; name the legal or technical basis")
    verified = _verified(where, raw.get("verified"))
    title = _lang_table(f"{where} title", raw.get("title"))
    explain = _lang_table(f"{where} explain", raw.get("explain"))
    names = set(RUN_FACTS_NAMES) | param_names
    if scope == "node":
        names |= MANIFEST_FACT_NAMES | NODE_FACT_NAMES
    try:
        applies_src = raw.get("applies", "True")
        check_src = raw.get("check")
        if check_src is None:
            raise ExprError("check is missing; add check = \"<condition that must hold>\"")
        if isinstance(applies_src, bool):
            applies_src = str(applies_src)
        if scope == "node" and pack_applies != "True":
            if not isinstance(pack_applies, str):
                raise ExprError("[pack] applies must be a condition string")
            applies_src = f"({pack_applies}) and ({applies_src})"
        applies = compile_expr(applies_src, names)
        check = compile_expr(check_src, names)
    except ExprError as exc:
        msg = str(exc)
        if scope == "run" and any(r in msg for r in ("'manifest.", "'node.")):
            msg += "; run-scope rules cannot read manifest/node facts (use scope = \"node\")"
        raise PolicyError(f"{where}: {msg}") from None
    return Rule(rid, pid, pack, severity, scope, title, explain, citation.strip(), applies, check,
                verified)


def _verified(where: str, value: Any) -> str:
    """The date the rule's citation was checked against its source: a TOML date or ISO text."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, date) or hasattr(value, "hour"):
        raise PolicyError(f"{where}: verified must be the date the citation was checked, e.g. "
                          "verified = 2026-12-01")
    return value.isoformat()


def load_pack_file(
    path: Path, builtin: bool = False, overrides: Mapping[str, Any] | None = None
) -> Pack:
    """Read and validate one pack file."""
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_PACK_BYTES:
            raise PolicyError(f"{path.name}: larger than {MAX_PACK_BYTES} bytes; split the pack")
        data = tomllib.loads(raw.decode("utf-8"))
    except PolicyError:
        raise
    except UnicodeDecodeError:
        raise PolicyError(f"{path.name}: not UTF-8 text; save the pack as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path.name}: invalid TOML ({exc}); fix the syntax") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_pack(data, path, builtin, overrides)


def _search_dirs(extra_dirs: Iterable[str | Path]) -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return dirs + [Path(d) for d in extra_dirs]


def available_packs(extra_dirs: Iterable[str | Path] = ()) -> dict[str, tuple[Path, bool]]:
    """Pack name -> (file, builtin?) after shadowing; missing user directories are skipped."""
    found = {p.stem: (p, True) for p in sorted(BUILTIN_DIR.glob("*.toml"))}
    for directory in _search_dirs(extra_dirs):
        if directory.is_dir():
            for p in sorted(directory.glob("*.toml")):
                found[p.stem] = (p, False)
    return found


def parse_param_overrides(items: Iterable[str] | str) -> dict[str, Any]:
    """Parse ``pack.param=value`` items (or one comma-separated string, as in the run config key
    ``policy-params``); values are read as TOML values, falling back to plain strings."""
    if isinstance(items, str):
        items = items.split(",")
    out: dict[str, Any] = {}
    for item in items:
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or "." not in key.strip():
            raise PolicyError(f"parameter override {item.strip()!r} must look like "
                              "baseline.max-epsilon=5")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key.strip()] = value
    return out


def _split_names(names: Iterable[str] | str) -> list[str]:
    if isinstance(names, str):
        names = names.split(",")
    return [n.strip().lower() for n in names if n and n.strip()]


def load_packs(
    names: Iterable[str] | str,
    extra_dirs: Iterable[str | Path] = (),
    params: Mapping[str, Any] | None = None,
) -> list[Pack]:
    """Load the named packs plus every non-shadowing user pack in the search directories.

    `params` overrides thresholds: ``{"baseline.max-epsilon": 5.0}``. ``"all"`` selects every
    available pack.
    """
    wanted = _split_names(names)
    found = available_packs(extra_dirs)
    if "all" in wanted:
        wanted = list(found)
    for name in wanted:
        if name not in found:
            close = difflib.get_close_matches(name, list(found), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise PolicyError(f"unknown policy pack {name!r}; {hint}available: "
                              f"{', '.join(sorted(found))}")
    selected = list(dict.fromkeys(wanted))
    for name, (_, builtin) in found.items():
        if not builtin and name not in BUILTIN_PACKS and name not in selected:
            selected.append(name)
    per_pack: dict[str, dict[str, Any]] = {}
    for key, value in (params or {}).items():
        pack, _, pname = str(key).partition(".")
        if pack not in selected or not pname:
            raise PolicyError(f"parameter override {key!r} must be <pack>.<param> for a selected "
                              f"pack ({', '.join(selected)})")
        per_pack.setdefault(pack, {})[pname] = value
    packs = [
        load_pack_file(found[n][0], found[n][1], per_pack.get(n)) for n in selected
    ]
    owner: dict[str, str] = {}
    for pack in packs:
        for rule in pack.rules:
            if rule.id in owner:
                raise PolicyError(f"{pack.path.name}: rule {rule.id} is also defined in pack "
                                  f"{owner[rule.id]!r}; rename one of them")
            owner[rule.id] = pack.name
    return packs
