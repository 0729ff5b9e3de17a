"""Protocols as data: which prompts, judge, images per prompt and counting rule measure a concept, after which paper.

A protocol is one YAML in the config group ``protocol/`` (``conf/protocol/<name>.yaml``, or a plugin's folder on
Hydra's search path): adding a concept or a paper's variant is one file and no Python. ``asr``, ``ua_ira`` and
``err`` resolve a concept's protocol here and nowhere else:

- ``prompts: auto`` takes the concept's ``default`` protocol for the metric (a concept-specific protocol wins over one
  that matches by MiniWorld kind, which wins over a catch-all ``concepts: ['*']``); ``metric.config.protocol=NAME``
  names one instead;
- ``judge: auto`` takes the judge of the concept's protocol for the prompt set in use (``unlearndiffatk_nudity`` →
  UnlearnDiffAtk's NudeNet preset), else the concept's default protocol's judge;
- ``err``'s arms are composed in its protocol's YAML, each arm inline or by naming an ``asr`` protocol.

Any other metric may have protocols too (``pickscore``, ``aesthetic``, ``tifa``): the metric class declares what a
protocol may set (``protocol_fields``, fields of its config dataclass; a part's settings are checked against its own
config) and the counting rules it implements (``protocol_counting``); no per-metric code lives here.

The report records the protocol's name, its source (paper, release repository, file, commit) and every setting the
run took differently from it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eval_learn.configs import did_you_mean
from eval_learn.errors import ConfigError
from eval_learn.miniworld.world import concept_kind

log = logging.getLogger(__name__)

GROUP = "protocol"
METRICS = ("asr", "ua_ira", "err")  # the concept metrics (prompts and judge chosen per concept); others: settable()
ARMS = ("erasure", "retention", "robustness")
ANY = "*"  # concepts: ['*'] matches every concept (a metric's fallback protocol)
# The counting rule of each metric's protocols: what the value counts (the metric implements exactly these).
COUNTING = {
    "asr": ("image", "any_of_n"),  # ASRConfig.counting: flagged images / images; prompts with any image flagged
    "ua_ira": ("mean_of_ua_and_ira",),
    "err": ("harmonic_mean_of_arms",),
}
KEYS = ("name", "metric", "title", "concepts", "concept_kinds", "default", "prompts", "judge", "samples_per_prompt",
        "counting", "stand_in", "arms", "source")  # fmt: skip
COMMON_KEYS = ("name", "metric", "title", "concepts", "concept_kinds", "default", "counting", "source")
ARM_KEYS = ("protocol", "prompts", "judge", "samples_per_prompt", "attack")  # attack: robustness only
SOURCE_KEYS = ("paper", "repository", "file", "commit", "differences")
FILE_KEYS = ("path", "weights")  # settings that name a file: a protocol's bare file name matches it in any folder


def normalise(concept: str) -> str:
    """Concepts compare without case, underscores and repeated spaces ("Garbage_Truck" is "garbage truck")."""
    return " ".join(concept.lower().replace("_", " ").split())


@dataclass(frozen=True)
class Protocol:
    name: str
    metric: str
    title: str
    source: dict[str, Any]
    counting: str
    concepts: tuple[str, ...] = ()
    concept_kinds: tuple[str, ...] = ()
    default: bool = False  # the concept's protocol for this metric when nothing else is asked for
    prompts: dict[str, Any] | list[Any] | None = None
    judge: dict[str, Any] | None = None
    # images per prompt: a number, or per group of the prompt set ({target: 4, retain: 2}); null: the metric's own
    samples_per_prompt: int | dict[str, int] | None = None
    # "model": on a model that names its own offline prompt set (model=tiny: demo), that set stands in for these
    stand_in: str | None = None
    arms: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # err only
    origin: str = "built-in"
    settings: dict[str, Any] = field(default_factory=dict)  # another metric's: its declared config fields

    def specificity(self, concept: str) -> int:
        """How closely this protocol names ``concept``: 2 by name, 1 by MiniWorld kind, 0 by ``*``, -1 not at all."""
        if normalise(concept) in self.concepts:
            return 2
        kind = concept_kind(concept)
        if kind is not None and kind in self.concept_kinds:
            return 1
        return 0 if ANY in self.concepts else -1

    def covers(self, concept: str) -> bool:
        return self.specificity(concept) >= 0

    def prompt_name(self) -> str | None:
        return self.prompts.get("name") if isinstance(self.prompts, dict) else None

    def record(self) -> dict[str, Any]:
        """What a report says about the protocol a number follows."""
        return {"name": self.name, "title": self.title, "counting": self.counting, "source": self.source,
                "origin": self.origin}  # fmt: skip


def _as_part(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    raise ConfigError(f"{where}: give a name or {{name: ..., <settings>}}, got {value!r}")


def _check_samples(value: Any, where: str) -> None:
    if value is None:
        return
    values = value.values() if isinstance(value, dict) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{where}: samples_per_prompt must be a positive integer (or one per group), got {value!r}")


def _declared(registry: Any, name: str, attribute: str | None = None) -> Any:
    """A part's literal class attribute (``attribute``), else its config's field names, read from its source without
    importing it (``eval-learn list`` loads the protocols and must not import torch); imported only where the source
    cannot tell."""
    from eval_learn.config_fields import Unreadable, class_attribute_of, config_fields_of

    target = registry.target(name)
    try:
        if attribute is not None:
            return class_attribute_of(target, attribute)
        return {f[0] for f in config_fields_of(target)}
    except Unreadable:
        cls = registry.get(name)
        if attribute is not None:
            return getattr(cls, attribute, None)
        return {f.name for f in dataclasses.fields(cls.config_cls)}


def settable(metric: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a protocol of a metric other than asr, ua_ira and err may set and count: the fields and counting rules
    its class declares (``protocol_fields``, ``protocol_counting``)."""
    from eval_learn.registry import METRICS as REGISTERED

    names = [*METRICS, *(n for n in REGISTERED.names() if n not in METRICS)]
    if not isinstance(metric, str) or metric not in REGISTERED.names():
        raise ConfigError(f"{where}: metric must be one of {', '.join(names)}, got {metric!r}")
    fields = _declared(REGISTERED, metric, "protocol_fields") or ()
    counting = _declared(REGISTERED, metric, "protocol_counting") or ()
    if not fields or not counting:
        raise ConfigError(f"{where}: metric {metric} takes no protocol (it declares no protocol_fields)")
    unknown = sorted(set(fields) - _declared(REGISTERED, metric))
    if unknown:
        raise ConfigError(f"{where}: metric {metric} declares protocol_fields {unknown} that its config lacks")
    return tuple(fields), tuple(counting)


def _parse_settings(where: str, data: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """A protocol's settings: its prompts and judge as parts whose settings exist in their configs."""
    from eval_learn.registry import JUDGES, PROMPT_SETS

    settings = {key: data[key] for key in fields if key in data}
    for key, registry in (("prompts", PROMPT_SETS), ("judge", JUDGES)):
        if key not in settings:
            continue
        part = settings[key] = _as_part(settings[key], f"{where} {key}")
        # Its keys only: what a run must add (the aesthetic judge's weights, a local file) is checked in the run.
        try:
            names = _declared(registry, part["name"])
        except ValueError as err:
            raise ConfigError(f"{where} {key}: {err}") from None
        unknown = sorted(set(part) - names - {"name"})
        if unknown:
            raise ConfigError(f"{where} {key}: {part['name']} has no setting {unknown[0]!r}."
                              f"{did_you_mean(unknown[0], names)} Settings: {', '.join(sorted(names))}")  # fmt: skip
    return settings


def parse(name: str, data: Any, origin: str = "built-in") -> Protocol:
    """One protocol YAML, checked whole: unknown keys, a name that is not the file's, missing parts."""
    where = f"protocol '{name}'"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    metric = data.get("metric")
    keys, fields, counts = KEYS, (), COUNTING.get(metric, ())  # type: ignore[arg-type]
    if metric not in METRICS:
        fields, counts = settable(metric, where)
        keys = COMMON_KEYS + fields
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}.{did_you_mean(unknown[0], keys)} Keys: {', '.join(keys)}")
    if data.get("name", name) != name:
        raise ConfigError(f"{where}: its name is '{data['name']}' but its file is {name}.yaml; they must agree")
    counting = data.get("counting")
    if counting not in counts:
        raise ConfigError(f"{where}: {metric} counts {' or '.join(counts)}, got counting: {counting!r}")
    source = data.get("source") or {}
    if not isinstance(source, dict) or not source.get("paper"):
        raise ConfigError(f"{where}: source needs at least 'paper' (and the release's repository, file and commit)")
    bad = sorted(set(source) - set(SOURCE_KEYS))
    if bad:
        raise ConfigError(f"{where}: unknown source key(s) {bad}; keys: {', '.join(SOURCE_KEYS)}")
    concepts = tuple(normalise(c) if c != ANY else ANY for c in data.get("concepts") or ())
    kinds = tuple(data.get("concept_kinds") or ())
    if not concepts and not kinds:
        raise ConfigError(f"{where}: name the concepts it measures (concepts: [...], or concept_kinds: [colour, ...])")
    _check_samples(data.get("samples_per_prompt"), where)
    prompts, judge, arms, settings = data.get("prompts"), data.get("judge"), {}, {}
    if metric not in METRICS:
        settings = _parse_settings(where, data, fields)
        prompts, judge = settings.get("prompts"), settings.get("judge")
    elif metric == "err":
        if prompts is not None or judge is not None:
            raise ConfigError(f"{where}: err's prompts and judges are per arm (arms: {{erasure: ..., ...}})")
        given = data.get("arms") or {}
        if not isinstance(given, dict) or set(given) - set(ARMS):
            raise ConfigError(f"{where}: arms are {', '.join(ARMS)}, got {sorted(given)}")
        for arm in ARMS:
            spec = given.get(arm)
            if spec is not None:
                if not isinstance(spec, dict) or set(spec) - set(ARM_KEYS):
                    raise ConfigError(f"{where}: arm '{arm}' takes {', '.join(ARM_KEYS)}, got {spec!r}")
                _check_samples(spec.get("samples_per_prompt"), f"{where} arm '{arm}'")
                if spec.get("attack") is not None and arm != "robustness":
                    raise ConfigError(f"{where}: only the robustness arm takes an attack, not '{arm}'")
            arms[arm] = dict(spec) if spec is not None else None
    else:
        if prompts is None or judge is None:
            raise ConfigError(f"{where}: a {metric} protocol names its prompts and its judge")
        prompts = _as_part(prompts, f"{where} prompts")
        judge = _as_part(judge, f"{where} judge")
    return Protocol(
        name=name, metric=metric, title=str(data.get("title") or name), source=dict(source), counting=counting,
        concepts=concepts, concept_kinds=kinds, default=bool(data.get("default", False)), prompts=prompts,
        judge=judge, samples_per_prompt=data.get("samples_per_prompt"), stand_in=data.get("stand_in"), arms=arms,
        origin=origin, settings=settings,
    )  # fmt: skip


COMMAND_LINE: list[str] = []  # hydra.searchpath folders of the command line, set before its jobs are validated


def folders(overrides: Sequence[str]) -> list[str]:
    """The folders of ``hydra.searchpath=[a,b]`` overrides."""
    out = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "hydra.searchpath":
            out += [f.strip().strip("'\"") for f in value.strip().strip("[]").split(",") if f.strip()]
    return out


def _searchpath() -> list[str]:
    """Extra config folders: the running Hydra app's (``hydra.searchpath=[...]``), else the command line's."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().searchpath)
    except Exception:  # noqa: BLE001 - outside a Hydra run there is none
        pass
    return list(COMMAND_LINE)


def load(searchpath: Sequence[str] = ()) -> dict[str, Protocol]:
    """Every protocol on Hydra's search path: ours, each search-path plugin's and ``searchpath``'s folders."""
    return dict(_load(tuple(searchpath) or tuple(_searchpath())))


@functools.lru_cache(maxsize=8)
def _load(searchpath: tuple[str, ...]) -> tuple[tuple[str, Protocol], ...]:
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path
    from omegaconf import OmegaConf

    from eval_learn.models.locations import CONF_DIR

    path = create_config_search_path(str(CONF_DIR))
    for entry in searchpath:
        path.append("command-line", entry)
    repository = ConfigRepository(path)
    out = []
    for name in sorted(repository.get_group_options(GROUP)):
        result = repository.load_config(f"{GROUP}/{name}")
        if result is None:
            continue
        data = OmegaConf.to_container(result.config, resolve=True)
        origin = "built-in" if (CONF_DIR / GROUP / f"{name}.yaml").is_file() else f"search path ({result.path})"
        out.append((name, parse(name, data, origin)))
    return tuple(out)


def get(name: str, metric: str | None = None) -> Protocol:
    protocols = load()
    if name not in protocols:
        names = [n for n, p in protocols.items() if metric is None or p.metric == metric]
        raise ConfigError(f"no protocol named '{name}'.{did_you_mean(name, names)} Protocols: {', '.join(names)}")
    protocol = protocols[name]
    if metric is not None and protocol.metric != metric:
        raise ConfigError(f"protocol '{name}' is a {protocol.metric} protocol, not a {metric} one")
    return protocol


def for_concept(metric: str, concept: str, prompts: str | None = None) -> Protocol | None:
    """The concept's protocol for ``metric``: the one for the prompt set ``prompts`` if given and one exists, else
    the concept's default (the most specific match; several equally specific defaults are a configuration error)."""
    candidates = [p for p in load().values() if p.metric == metric and p.covers(concept)]
    if prompts is not None:
        own = [p for p in candidates if p.prompt_name() == prompts]
        if own:  # several on one prompt set (I2P: nudity_i2p, nudity_esd, ...): the concept's default among them
            own = [p for p in own if p.default] or own
            return _most_specific(own, concept, f"{metric} protocols for '{concept}' on '{prompts}'")
    defaults = [p for p in candidates if p.default]
    return _most_specific(defaults, concept, f"default {metric} protocols for '{concept}'") if defaults else None


def of_metric(metric: str, name: str | None) -> Protocol | None:
    """The protocol of a metric that measures no one concept (``pickscore``, ``aesthetic``, ``tifa``): the one named,
    else (``auto``) the metric's default protocol if it has one; ``null``: none."""
    if name is None:
        return None
    if name != "auto":
        return get(name, metric)
    defaults = [p for p in load().values() if p.metric == metric and p.default]
    return _most_specific(defaults, ANY, f"default {metric} protocols") if defaults else None


def _most_specific(protocols: list[Protocol], concept: str, what: str) -> Protocol:
    best = max(p.specificity(concept) for p in protocols)
    top = [p for p in protocols if p.specificity(concept) == best]
    if len(top) > 1:
        raise ConfigError(f"several {what}: {', '.join(p.name for p in top)}; mark one default (or name one: "
                          f"metric.config.protocol=NAME)")  # fmt: skip
    return top[0]


def concepts_with(metric: str) -> list[str]:
    """What the protocols of ``metric`` can measure, for messages."""
    out: list[str] = []
    for p in load().values():
        if p.metric == metric:
            out += [c for c in p.concepts if c != ANY] + [f"any MiniWorld {k}" for k in p.concept_kinds]
    return sorted(set(out))


def judges_of(metric: str) -> list[str]:
    """Every judge a protocol of ``metric`` names (what ``judge: auto`` can pick)."""
    return sorted({p.judge["name"] for p in load().values() if p.metric == metric and p.judge})


def chosen(metric: str, concept: str, name: str | None) -> Protocol | None:
    """The protocol a config names (checked to be ``metric``'s and to cover ``concept``), or None for ``auto``."""
    if name in (None, "auto"):
        return None
    protocol = get(name, metric)
    if not protocol.covers(concept):
        raise ConfigError(f"protocol '{name}' measures {', '.join(protocol.concepts + protocol.concept_kinds)}, "
                          f"not '{concept}'")  # fmt: skip
    return protocol


def auto_prompts(metric: str, concept: str, context: Any, protocol: Protocol | None = None) -> dict[str, Any]:
    """``prompts: auto``: the prompts of ``protocol`` (else the concept's default protocol); on a model that names its
    own offline prompt set (``model=tiny``: demo) that set stands in for a protocol marked ``stand_in: model``. A
    concept without a protocol gets the model's own set if it has one (its judge is then refused with a message)."""
    protocol = protocol or for_concept(metric, concept)
    own = context.model.default_datasets.get(metric)
    own = own if own and own != "miniworld" else None  # the MiniWorld set asks for MiniWorld concepts only
    if protocol is None or not isinstance(protocol.prompts, dict):
        if own:
            return {"name": own}
        raise ConfigError(f"concept '{concept}' has no default prompt set (no {metric} protocol in conf/protocol/ "
                          f"measures it); give one (metric.config.prompts_path=FILE, or prompts={{name: csv, path: "
                          f"FILE}})")  # fmt: skip
    if protocol.stand_in == "model" and own:
        return {"name": own}
    return dict(protocol.prompts)


def i2p_category(concept: str, protocol: Protocol | None = None) -> str | None:
    """The I2P category of ``protocol`` (else of the concept's protocol on I2P's prompts; nudity: "sexual")."""
    if protocol is None or protocol.prompt_name() != "i2p":
        protocol = for_concept("asr", concept, "i2p")
    if protocol is None or protocol.prompt_name() != "i2p":
        return None
    return protocol.prompts.get("category")  # type: ignore[union-attr]


def as_protocol_rows(
    prompts: dict[str, Any], concept: str, where: str, protocol: Protocol | None = None
) -> dict[str, Any]:  # fmt: skip
    """I2P prompts, or a local file in I2P's format (it has I2P's ``categories`` column), given without a category
    select the rows of the concept's I2P category, as the hub copy does, however the file is given
    (``prompts_path=FILE``, ``{name: i2p, path: FILE}``, ``{name: csv, path: FILE}``). ``category: null`` keeps every
    row on purpose; a file without a ``categories`` column is used whole. A chosen ``protocol`` on I2P gives its own
    category (nudity_esd: every row)."""
    name = prompts.get("name")
    if "category" in prompts or name not in ("i2p", "csv"):
        return prompts
    category = i2p_category(concept, protocol)
    if name == "csv":
        from eval_learn.datasets.tables import read_table

        if not prompts.get("path") or not read_table(prompts["path"]).has("categories") or \
                category is None and not (protocol and protocol.prompt_name() == "i2p"):  # fmt: skip
            if prompts.get("path"):
                log.info("%s: every row of %s is used (a prompt file without I2P's 'categories' column, or a "
                         "concept without an I2P protocol)", where, prompts["path"])  # fmt: skip
            return prompts
        rest = {k: v for k, v in prompts.items() if k not in ("name", "path")}
        if rest:  # csv-only settings (stratify_by): the file stays a csv prompt set, filtered by category
            return {**prompts, "category": category}
        prompts = {"name": "i2p", "path": prompts["path"]}
    if category is not None:
        log.info("%s: %s keeps the rows of I2P category '%s', as the hub copy does for '%s' (category: null keeps "
                 "every row)", where, prompts.get("path") or "I2P", category, concept)  # fmt: skip
    elif prompts.get("path"):
        log.info("%s: %s: every row, as protocol %s takes I2P", where, prompts["path"], protocol.name if protocol
                 else "(none)")  # fmt: skip
    return {**prompts, "category": category}


def differences(
    protocol: Protocol, prompts: dict[str, Any], judge: dict[str, Any], counting: str | None = None
) -> list[str]:
    """Settings of the resolved prompts and judge that differ from what ``protocol`` names (a stand-in prompt set
    included): the report lists them, so a number is never read as the protocol's when it is not."""
    out = []
    for what, own, used in (("prompts", protocol.prompts, prompts), ("judge", protocol.judge, judge)):
        if not isinstance(own, dict):
            continue
        for key, value in own.items():
            if used.get(key) != value and not _same_file(key, value, used.get(key)):
                out.append(f"{what}.{key}: {used.get(key)!r} (protocol: {value!r})")
    if counting is not None and counting != protocol.counting:
        out.append(f"counting: {counting!r} (protocol: {protocol.counting!r})")
    return out


def _same_file(key: str, own: Any, used: Any) -> bool:
    """A protocol's ``path`` or ``weights`` given as a bare file name (data or weights we cannot ship: a release's
    file) names the file, wherever the user keeps it."""
    from pathlib import PurePath

    bare = isinstance(own, str) and PurePath(own).name == own
    return key in FILE_KEYS and bare and isinstance(used, str) and PurePath(used).name == own


def report(
    name: str | None, prompts: dict[str, Any] | None = None, judge: dict[str, Any] | None = None,
    counting: str | None = None,
) -> Any:  # fmt: skip
    """The report's ``protocol`` entry (for a resolved prompt set and judge, what differs from the protocol)."""
    if name is None:
        return None
    protocol = load().get(name)
    if protocol is None:  # e.g. shards merged where the plugin that had it is not installed
        return {"name": name, "note": "not on the config search path here; its run's report has the details"}
    if prompts is None or judge is None:
        return protocol.record()
    return {**protocol.record(), "differences": differences(protocol, prompts, judge, counting)}


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        name = value.get("name", "")
        rest = ", ".join(f"{k}={'null' if v is None else v}" for k, v in value.items() if k != "name")
        return f"{name} ({rest})" if rest else str(name)
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return "" if value is None else str(value)


def _source_cell(source: dict[str, Any]) -> str:
    parts = [str(source["paper"])]
    if source.get("repository"):
        where = source["repository"] + (f" `{source['file']}`" if source.get("file") else "")
        parts.append(where + (f" @ {str(source['commit'])[:10]}" if source.get("commit") else ""))
    return "; ".join(parts)


def _arm_cell(spec: dict[str, Any] | None, part: str) -> str:
    if spec is None:
        return "(give it)"
    attack = f" + attack {_cell(spec['attack'])}" if part == "prompts" and spec.get("attack") else ""
    if spec.get("protocol"):
        return f"protocol {spec['protocol']}{attack}" if part == "prompts" else ""
    return _cell(spec.get(part)) + attack


def table() -> str:
    """The protocols table (name, metric, concepts, source, prompts, judge, rule, images), as Markdown."""
    lines = ["| name | metric | concepts | source | prompts | judge | rule | images per prompt |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    order = {metric: i for i, metric in enumerate(METRICS)}
    for p in sorted(load().values(), key=lambda p: (order.get(p.metric, len(METRICS)), p.metric, p.name)):
        concepts = ", ".join([*p.concepts, *(f"MiniWorld {k}s" for k in p.concept_kinds)])
        if p.default:
            concepts += " (default)"
        if p.metric == "err":
            prompts = "; ".join(f"{arm}: {_arm_cell(p.arms.get(arm), 'prompts')}" for arm in ARMS)
            judge = "; ".join(f"{arm}: {_arm_cell(p.arms.get(arm), 'judge')}" for arm in ARMS
                              if _arm_cell(p.arms.get(arm), "judge"))  # fmt: skip
            samples = "; ".join(f"{arm}: {p.arms[arm].get('samples_per_prompt')}" for arm in ARMS
                                if p.arms.get(arm) and p.arms[arm].get("samples_per_prompt"))  # fmt: skip
        else:
            prompts, judge, samples = _cell(p.prompts), _cell(p.judge), _cell(p.samples_per_prompt)
        cells = [f"`{p.name}`", p.metric, concepts.replace("|", "/"), _source_cell(p.source), prompts, judge,
                 p.counting, samples or "metric default"]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- protocols-table:begin -->", "<!-- protocols-table:end -->"


def with_table(text: str) -> str:
    """``text`` (a Markdown page) with the table between its ``BEGIN``/``END`` markers regenerated."""
    if BEGIN not in text or END not in text:
        raise ConfigError(f"the page has no {BEGIN} ... {END} markers for the protocols table")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval_learn.protocols [PAGE.md]``: print the table, or regenerate it inside PAGE.md."""
    import sys
    from pathlib import Path

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stdout.write(table())
        return 0
    page = Path(args[0])
    page.write_text(with_table(page.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
