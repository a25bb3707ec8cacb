"""JSON from files that may be hostile (manifests, keystores, journals, lock records): bounded,
then checked against one schema each.

``load_json(data, where)`` refuses more than ``MAX_DEPTH`` levels of nesting *before* parsing
(a 100,000-deep document would otherwise exhaust the parser's recursion), then parses; the caller
has already bounded the size (``MAX_MANIFEST_BYTES``, ``MAX_KEYSTORE_BYTES``, ...: the limits of
every JSON file ppdata reads are here). ``check(obj, name, where)`` validates against the schema
``name`` of ``SCHEMAS`` (JSON Schema 2020-12, ``jsonschema``): every field's type and range is
stated once, in the schema, and any mismatch is one ``PpdataError`` line naming the file and the
field (``manifest.json: splits.train.shards[0].bytes is missing``), never a traceback.
Cross-field rules (counts that add up, shard names in order) stay with the code that owns them.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache

from .errors import PpdataError
from .names import printable

MAX_DEPTH = 32
MAX_MANIFEST_BYTES = 256 << 20
MAX_JOURNAL_BYTES = 256 << 20
MAX_KEYSTORE_BYTES = 64 << 10
MAX_LOCK_BYTES = 64 << 10

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text (brackets inside strings not counted),
    without parsing it."""
    import numpy as np

    stripped = _STRING.sub(b'""', data)
    a = np.frombuffer(stripped, np.uint8)
    depth, best = 0, 0
    step = 8 << 20
    for i in range(0, len(a), step):
        part = a[i:i + step]
        delta = ((part == 91) | (part == 123)).astype(np.int32) - ((part == 93) | (part == 125)).astype(np.int32)
        if not delta.any():
            continue
        run = np.cumsum(delta, dtype=np.int64) + depth
        best = max(best, int(run.max()))
        depth = int(run[-1])
    return best


def load_json(data: bytes | str, where: str, max_depth: int = MAX_DEPTH):
    """Parse ``data`` (already size-bounded) as JSON, refusing more than ``max_depth`` levels of
    nesting first; any failure is one ``PpdataError`` naming ``where``."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if json_depth(raw) > max_depth:
        raise PpdataError(f"{where}: nested more than {max_depth} levels deep; not a ppdata file")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PpdataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        raise PpdataError(f"{where}: not valid JSON ({printable(str(e))[:200]})") from None


# ---------------------------------------------------------------------------------------------
# the schemas

_INT = {"type": "integer", "minimum": 0}
_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "64 hex digits"}
_HEX16 = {"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "16 hex digits"}
_SPLIT = {"type": "string", "pattern": "^[A-Za-z0-9]{1,32}$", "description": "a split name (1-32 letters, digits)"}
_SIDE = {"type": "integer", "minimum": 1, "maximum": 1 << 16}
_SIZE2 = {"type": "array", "items": _SIDE, "minItems": 2, "maxItems": 2, "description": "[H, W]"}
_TEXT = {"type": "string", "maxLength": 4096}
_VARIANT = {"type": "string", "pattern": "^f[01]_sx[+-][0-9]{1,5}_sy[+-][0-9]{1,5}$",
            "description": "a variant name like f1_sx+4_sy-4"}

# a scheme entry: its name and options (checked against the scheme's own constructor by
# ``cipher.scheme_from_manifest``); options are plain values
SCHEME = {
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$", "description": "a scheme name"},
                   "encrypted": {"type": "boolean"}},
    "additionalProperties": {"type": ["boolean", "integer", "string", "null"]},
}

DECODE = {
    "type": "object",
    "properties": {
        "resize": {"oneOf": [{"type": "null"}, _SIDE, _SIZE2], "description": "null, S or [H, W]"},
        "resize_rule": {"enum": [None, "squash", "shorter side"]},
        "crop": {"oneOf": [{"type": "null"}, _SIZE2], "description": "null or [H, W]"},
        "crop_rule": {"type": ["string", "null"]},
        "interpolation": {"enum": [None, "nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]},
        "exif_orientation": {"const": "applied"},
        "decoder": {"enum": ["auto", "pillow", "torchvision"]},
        "decoder_requested": {"enum": ["auto", "pillow", "torchvision"]},
        "max_pixels": {"type": "integer", "minimum": 1},
        "max_bytes": {"type": "integer", "minimum": 1},
        "pillow": {"type": ["string", "null"]},
    },
}

AUGMENT = {
    "type": "object", "required": ["domain", "variants", "factor"],
    "properties": {
        "domain": {"enum": ["plain", "encrypted"]},
        "variants": {"type": "array", "items": _VARIANT, "minItems": 1, "maxItems": 4096},
        "factor": {"type": "integer", "minimum": 1, "maximum": 4096},
        "fill": {"type": "integer", "minimum": 0, "maximum": 255},
        "split": _SPLIT,
        "seed": {"type": "integer"},
        "parent": {"type": "object", "properties": {"split": _SPLIT, "count": _INT,
                                                     "id": {"type": ["string", "null"]},
                                                     "manifest_sha256": {"oneOf": [{"type": "null"}, _HEX64]}}},
        "order": {"type": "object"},
        "carried": {"type": "object", "additionalProperties": {"enum": ["hardlink", "copy"]}},
    },
}

SHARD = {
    "type": "object", "required": ["name", "count"],
    "properties": {"name": {"type": "string", "maxLength": 64}, "count": _INT, "bytes": {"type": ["integer", "null"], "minimum": 0},
                   "sha256": {"oneOf": [{"type": "null"}, _HEX64]}},
}

SPLIT_INFO = {
    "type": "object", "required": ["count", "shards"],
    "properties": {
        "count": _INT,
        "shards": {"type": "array", "items": SHARD, "minItems": 1, "maxItems": 1_000_000},
        "skipped": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["count"],
            "properties": {"count": _INT, "files": {"type": "array", "items": {
                "type": "object", "properties": {"index": _INT, "path": _TEXT, "reason": _TEXT}}}}}],
            "description": "an object with a count"},
        "decoded": {"type": "object", "additionalProperties": _INT},
        "source_listing": {"type": "object", "properties": {"count": _INT, "sha256": _HEX64, "block": _INT,
                                                             "blocks": {"type": "array", "items": _HEX16}}},
        "augment": AUGMENT,
    },
}

MANIFEST = {
    "type": "object", "required": ["format", "shape", "splits"],
    "properties": {
        "manifest_version": {"type": "integer", "minimum": 1},
        "ppdata_version": {"type": ["string", "null"]},
        "id": {"type": ["string", "null"], "maxLength": 64},
        "created": {"type": ["string", "null"]},
        "format": {"enum": ["webdataset", "hdf5"]},
        "source": {"type": ["object", "null"]},
        "scheme": {"oneOf": [{"type": "null"}, SCHEME], "description": "a scheme entry"},
        "keys": {"oneOf": [{"type": "null"}, {
            "type": "object",
            "properties": {"mode": {"enum": ["independent", "same"]}, "key_id": {"oneOf": [{"type": "null"}, _HEX16]},
                           "seeded": {"type": "boolean"}, "derivation": {"type": "integer", "minimum": 1}}}],
            "description": "null or a keys entry"},
        "scheme_check": _HEX16,
        "shape": {"type": "array", "prefixItems": [_SIDE, _SIDE, {"const": 3}], "minItems": 3, "maxItems": 3,
                  "description": "[H, W, 3]"},
        "classes": {"type": "array", "items": {"type": "string"}, "maxItems": 1_000_000},
        "sample_key": {"type": ["string", "null"]},
        "options": {"type": ["object", "null"], "properties": {  # as given; what readers use is checked
            "shard_size": {"type": "integer", "minimum": 1}, "batch_size": {"type": "integer", "minimum": 1},
            "resize": {"oneOf": [{"type": "null"}, _SIDE, _SIZE2], "description": "null, S or [H, W]"},
            "crop": {"oneOf": [{"type": "null"}, _SIZE2], "description": "null or [H, W]"},
            "max_pixels": {"type": "integer", "minimum": 1}, "max_bytes": {"type": "integer", "minimum": 1},
            "strict": {"type": "boolean"}}},
        "decode": {"oneOf": [{"type": "null"}, DECODE], "description": "null or a decode entry"},
        "engine": {"type": ["object", "null"]},
        "splits": {"type": "object", "propertyNames": _SPLIT, "additionalProperties": SPLIT_INFO, "minProperties": 1},
        "augment": {"oneOf": [{"type": "null"}, AUGMENT], "description": "null or an augment entry"},
    },
}

PNG_MANIFEST = {
    "type": "object", "required": ["format", "files"],
    "properties": {
        "format": {"const": "png"},
        "files": {"type": "object", "additionalProperties": _INT},
        "splits": {"type": "object", "propertyNames": _SPLIT,
                   "additionalProperties": {"type": "object", "properties": {"count": _INT}}},
        "classes": {"type": "array", "items": {"type": "string"}},
    },
}

KEYSTORE = {
    "type": "object", "required": ["format", "mode", "secret"],
    "properties": {
        "format": {"const": "ppdata-keystore"},
        "version": {"const": 1},
        "mode": {"enum": ["independent", "same"]},
        "secret": _HEX64,
        "key_id": _HEX16,
        "seeded": {"type": "boolean"},
        "scheme": {"oneOf": [{"type": "null"}, SCHEME], "description": "null or a scheme entry"},
        "dataset": {"type": ["string", "null"], "maxLength": 64},
    },
}

JOURNAL_HEADER = {
    "type": "object", "required": ["run"],
    "properties": {"run": {"type": "string", "minLength": 1, "maxLength": 64}, "pid": {"type": "integer"},
                   "host": {"type": "string", "maxLength": 256}, "started": {"type": "string", "maxLength": 64},
                   "ppdata": {"type": "string", "maxLength": 64},
                   "writes": {"enum": ["shards", "png"]}, "note": {"type": "string", "maxLength": 1024}},
}

JOURNAL_CLAIM = {
    "type": "object", "required": ["claim"], "additionalProperties": False,
    "properties": {"claim": {"type": "string", "minLength": 1, "maxLength": 1024}},
}

LOCK = {
    "type": "object", "required": ["run", "heartbeat"],
    "properties": {"run": {"type": "string", "minLength": 1, "maxLength": 64}, "pid": {"type": "integer"},
                   "host": {"type": "string", "maxLength": 256}, "heartbeat": {"type": "number"}},
}

SCHEMAS = {"manifest": MANIFEST, "png manifest": PNG_MANIFEST, "keystore": KEYSTORE, "journal header": JOURNAL_HEADER,
           "journal claim": JOURNAL_CLAIM, "lock": LOCK, "decode": DECODE, "scheme": SCHEME}


@lru_cache(maxsize=None)
def _validator(name: str):
    from jsonschema import Draft202012Validator

    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def check(obj, name: str, where: str) -> None:
    """Validate ``obj`` against ``SCHEMAS[name]``; the first problem as one ``PpdataError`` line
    naming ``where`` and the field."""
    from jsonschema.exceptions import best_match

    err = best_match(_validator(name).iter_errors(obj))
    if err is not None:
        raise PpdataError(f"{where}: {describe(err)}")


def field(path) -> str:
    """A JSON path as ``splits.train.shards[0].bytes``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + printable(p)[:64]
    return out


def short(value, limit: int = 60) -> str:
    """A value for a message: JSON-like, control characters escaped, at most ``limit`` characters."""
    if isinstance(value, dict):
        text = "an object"
    elif isinstance(value, list):
        text = f"a list of {len(value)}"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPES = {"integer": "an integer", "string": "text", "object": "an object", "array": "a list", "boolean": "true or false",
          "number": "a number", "null": "null"}


def describe(err) -> str:
    """One line for a ``jsonschema`` error: the field, what it is, what was expected."""
    path = list(err.absolute_path)
    v, want = err.validator, err.validator_value
    if v == "required":
        missing = next((k for k in want if isinstance(err.instance, dict) and k not in err.instance), "?")
        return f"{field(path + [missing])} is missing"
    if v == "additionalProperties" and want is False and isinstance(err.instance, dict):
        extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
        return f"{field(path) or 'the top level'} has an unexpected field {short(extra[0] if extra else '?')}"
    if v == "propertyNames":
        return f"{field(path) or 'the top level'} has a name that is not {err.schema.get('propertyNames', {}).get('description', 'allowed')}"
    name = field(path) or "the file"
    got = short(err.instance)
    expected = err.schema.get("description")
    if v == "type":
        types = [want] if isinstance(want, str) else list(want)
        expected = expected or " or ".join(_TYPES.get(t, t) for t in types)
    elif v in ("enum", "const"):
        values = [want] if v == "const" else want
        expected = expected or "one of " + ", ".join(short(x, 30) for x in values)
    elif v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        expected = f"a number {op} {want}"
    elif v in ("minItems", "maxItems"):
        return f"{name} holds {len(err.instance)} items, expected {'at least' if v == 'minItems' else 'at most'} {want}"
    elif v in ("minProperties", "maxProperties"):
        return f"{name} holds {len(err.instance)} entries, expected {'at least' if v == 'minProperties' else 'at most'} {want}"
    elif v in ("minLength", "maxLength"):
        return f"{name} is {len(err.instance)} characters, expected {'at least' if v == 'minLength' else 'at most'} {want}"
    elif not expected:
        expected = printable(err.message)[:120]
    return f"{name} is {got}, expected {expected}"
