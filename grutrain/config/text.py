"""Config text: reading YAML safely, and filling run.dir templates.

YAML from a file or an override is bounded before it becomes Python objects: a document that
expands past MAX_NODES nodes (an alias bomb), a number of more than MAX_DIGITS digits, a key given
twice in one mapping or nesting too deep is refused in one line. Error messages quote at most a
short, escaped excerpt of what was given.
"""

from __future__ import annotations

import re
import string
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from grutrain.errors import GrutrainError

MAX_NODES = 100_000  # a config has a few dozen; aliases may not expand past this
MAX_DIGITS = 100
MAX_FORMAT_WIDTH = 255  # in a run.dir template's {key:spec}
MAX_RUN_DIR_LENGTH = 4096


def excerpt(value: Any, limit: int = 60) -> str:
    """`repr(value)`, escaped (no terminal control codes) and cut to about `limit` characters."""
    if isinstance(value, (dict, list, tuple)) and len(value) > 20:
        return f"<a {type(value).__name__} of {len(value)} items>"
    text = repr(value) if isinstance(value, str) else repr(value)[: limit * 4]
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# PyYAML follows YAML 1.1, where `3e-4` (no dot) is a string. Resolve YAML 1.2 floats too.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        # A key given twice would silently lose the first value: name it instead.
        if isinstance(node, MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {excerpt(key)} is given twice; "
                                                            "keep one of them", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        if sum(c.isdigit() for c in str(node.value)) > MAX_DIGITS:
            raise yaml.constructor.ConstructorError(None, None, f"a number of more than {MAX_DIGITS} digits",
                                                    node.start_mark)
        return super().construct_yaml_int(node)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _expanded_size(root) -> int:
    """Nodes in the document with every alias expanded (shared nodes counted each time they are used)."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key] if sizes[key] >= 0 else MAX_NODES + 1  # an alias inside itself: endless
        sizes[key] = -1
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        sizes[key] = min(total, MAX_NODES + 1)
        return sizes[key]

    return size(root)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text` as Python objects, or a one-line GrutrainError naming `source`."""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise GrutrainError(f"{source}: the YAML expands to more than {MAX_NODES} values (aliases inside "
                                "aliases?); write the config out plainly")
        return loader.construct_document(node)
    except RecursionError:
        raise GrutrainError(f"{source}: the YAML is nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GrutrainError(f"{source}: invalid YAML{where}: {problem[:200]}") from None
    except ValueError as exc:  # e.g. a number PyYAML cannot convert
        raise GrutrainError(f"{source}: invalid YAML: {str(exc)[:200]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def format_config_value(value: Any) -> str:
    """A config value as it reads in YAML: 0.003 (not 0.0030000000000000001), true, null, 0.9,0.999."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float: 0.003, 1e-05
    if isinstance(value, (list, tuple)):
        return ",".join(format_config_value(v) for v in value)
    return str(value)


def resolve_run_dir_template(template: str, values: dict) -> str:
    """Fill `{section.key}` (or `{section.key:spec}`, a Python format spec) in run.dir from the config's values.

    The result holds no braces, so the saved config (in config.yaml and in checkpoints) validates
    again to the same run.dir.
    """

    def fail(problem: str) -> ValueError:
        return ValueError(f"run.dir {excerpt(template)}: {problem}; placeholders name config keys, "
                          "e.g. runs/lr{optim.lr}-h{model.hidden_size}")

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise fail(f"not a valid template ({exc})") from None
    out = []
    for literal, field, spec, conversion in parts:
        out.append(literal)
        if field is None:
            continue
        section, dot, key = field.partition(".")
        node = values.get(section)
        if dot:
            node = node.get(key) if isinstance(node, dict) and key in node else None
        if node is None and not _has_leaf(values, field) or isinstance(node, dict) or field in ("run.dir", ""):
            raise fail(f"unknown placeholder {{{excerpt(field)[1:-1]}}}")
        if conversion:
            raise fail(f"{{{field}!{conversion}}} is not supported, write {{{field}}}")
        # A width of 2000000000 would build a 2 GB string before anything could refuse it.
        if any(int(number) > MAX_FORMAT_WIDTH for number in re.findall(r"\d+", spec or "")):
            raise fail(f"the width or precision in ':{excerpt(spec)[1:-1]}' is over {MAX_FORMAT_WIDTH}")
        try:
            out.append(format(node, spec) if spec else format_config_value(node))
        except (ValueError, TypeError) as exc:
            raise fail(f"cannot format {field}={excerpt(node)} with ':{excerpt(spec)[1:-1]}' ({exc})") from None
    resolved = "".join(out)
    if len(resolved) > MAX_RUN_DIR_LENGTH:
        raise fail(f"the result is {len(resolved)} characters long (at most {MAX_RUN_DIR_LENGTH})")
    if "{" in resolved or "}" in resolved:
        raise fail(f"the result {excerpt(resolved)} still holds a brace")
    return resolved


def _has_leaf(values: dict, field: str) -> bool:
    """Whether `section.key` (or a top-level `task`) is a config key, even when its value is null."""
    section, dot, key = field.partition(".")
    if not dot:
        return section in values
    return isinstance(values.get(section), dict) and key in values[section]
