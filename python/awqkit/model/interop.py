"""What a checkpoint's config files must say so that every loader reads it the same way:
transformers 4.x and 5.x, AutoAWQ and vLLM (AWQ, AWQ-Marlin).

Pure functions on names and dicts (no torch), used by ``write_checkpoint_metadata``:

- ``modules_to_not_convert``: the skip list, layer-relative where a module is kept in full
  precision in every decoder block (AutoAWQ matches only names inside one block), full paths
  otherwise, and never an entry that one of the loaders' matching rules would apply to a
  quantized linear (``loader_skips``).
- ``add_legacy_config_keys``: the transformers-4 keys beside the transformers-5 ones in
  config.json (``rope_theta``, ``rope_scaling``, ``torch_dtype``).
- ``tokenizer_class_for_v4``: a ``tokenizer_class`` transformers 4.x knows.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable

__all__ = ["add_legacy_config_keys", "loader_skips", "modules_to_not_convert", "tokenizer_class_for_v4"]

log = logging.getLogger(__name__)


def _substring_rule(entry: str, full_name: str) -> bool:
    # vLLM AWQ and AWQ-Marlin: quantization/utils/quant_utils.py is_layer_skipped(...,
    # skip_with_substr=True) -> any(layer in prefix ...), on the full module name (fused
    # qkv_proj/gate_up_proj are expanded to their HF shard names first).
    # transformers 4.x: integrations/awq.py replace_with_awq_linear -> any(key in
    # ".".join(current_key_name)), the full name.
    # AutoAWQ: awq/utils/module.py exclude_layers_to_not_quantize -> any(key in name), on the
    # name inside one decoder block, a suffix of the full name: a match there is a match here.
    return entry in full_name


def _transformers5_rule(entry: str, full_name: str) -> bool:
    # transformers 5.x: quantizers/quantizers_utils.py should_convert_module: the entry as a
    # regex from the start of the full name up to a module boundary, or as a plain suffix.
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    try:
        if re.match(rf"(?:{entry}){boundary}", full_name):
            return True
    except re.error:
        pass
    return full_name.endswith(entry)


def loader_skips(entry: str, full_name: str) -> bool:
    """Whether any of the loaders would keep the module ``full_name`` in full precision
    because of the ``modules_to_not_convert`` entry ``entry``."""
    return _substring_rule(entry, full_name) or _transformers5_rule(entry, full_name)


def _split(name: str, layers_path: str | None) -> tuple[int, str] | None:
    """(block index, name inside the block) of a module under ``layers_path``."""
    if not layers_path or not name.startswith(layers_path + "."):
        return None
    idx, _, rel = name[len(layers_path) + 1:].partition(".")
    return (int(idx), rel) if idx.isdigit() and rel else None


def modules_to_not_convert(skipped: Iterable[str], quantized: Iterable[str], layers_path: str | None, n_blocks: int,
                           user_patterns: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """The ``modules_to_not_convert`` list of a checkpoint, and notes on what a loader cannot
    read from it (each also logged as a warning).

    ``skipped``: full names of the linears kept in full precision; ``quantized``: full names
    of the quantized linears (the ``.qweight`` tensors); ``layers_path``: the decoder-block
    list (``model.layers``), ``n_blocks`` its length; ``user_patterns``: the run's own
    ``modules_to_not_convert`` substrings, written too where no loader would apply them to a
    quantized linear.

    A module skipped in every block is written by its name inside the block
    (``mlp.down_proj``): AutoAWQ matches only that name (``any(key in name)`` inside each
    block), vLLM and transformers match it on the full name (substring, suffix). Where that
    name would also match a quantized linear under one of the loaders' rules, or the module is
    skipped in some blocks only, the full paths are written: AutoAWQ then quantizes the module
    anyway (a note says so)."""
    quantized = sorted(set(quantized))
    skipped = sorted(set(skipped))
    notes: list[str] = []

    def collides(entry: str) -> list[str]:
        return [q for q in quantized if loader_skips(entry, q)]

    by_rel: dict[str, set[int]] = defaultdict(set)
    outside: list[str] = []
    for name in skipped:
        where = _split(name, layers_path)
        if where is None:
            outside.append(name)
        else:
            by_rel[where[1]].add(where[0])
    entries: set[str] = set(outside)
    for rel, blocks in sorted(by_rel.items()):
        full = [f"{layers_path}.{i}.{rel}" for i in sorted(blocks)]
        if len(blocks) == n_blocks and not collides(rel):
            entries.add(rel)
            continue
        if len(blocks) == n_blocks:
            hit = collides(rel)
            why = f"the name {rel!r} would also match quantized linears ({hit[0]}{', ...' if len(hit) > 1 else ''})"
        else:
            why = f"it is kept in full precision in {len(blocks)} of {n_blocks} blocks only ({sorted(blocks)[:8]})"
        entries.update(full)
        notes.append(f"{rel}: {why}, so modules_to_not_convert lists its full paths, which AutoAWQ (it matches names "
                     "inside one block) does not apply: AutoAWQ cannot load this checkpoint; vLLM and transformers can")
    for entry in sorted(set(user_patterns) - entries):
        hit = collides(entry)
        if hit:
            notes.append(f"the modules_to_not_convert entry {entry!r} is left out of the checkpoint's config: a loader "
                         f"would apply it to the quantized linear {hit[0]}")
        else:
            entries.add(entry)
    for entry in sorted(entries):
        if entry in outside or _split(entry, layers_path) is not None:
            hit = collides(entry)
            if hit:  # a full path inside another full path: no spelling every loader reads right
                notes.append(f"the full path {entry!r} would also match the quantized linear {hit[0]} in a loader that "
                             "matches substrings (vLLM, transformers 4.x, AutoAWQ): they would not load it right")
    for note in notes:
        log.warning("checkpoint config: %s", note)
    return sorted(entries), notes


# Tokenizer classes that only transformers 5 defines (transformers 4.x raises "Tokenizer class
# ... does not exist or is not currently imported" on them).
_V5_ONLY_TOKENIZERS = frozenset({"TokenizersBackend", "SentencePieceBackend", "PythonBackend"})


def tokenizer_class_for_v4(written: str | None, source: str | None, has_tokenizer_json: bool,
                           has_sentencepiece_model: bool) -> str | None:
    """The ``tokenizer_class`` to write so transformers 4.x loads the tokenizer: the one
    written when 4.x knows it; else the source folder's own when 4.x knows that; else
    ``PreTrainedTokenizerFast`` over tokenizer.json (transformers 5 reads it back as its
    alias of ``TokenizersBackend``); else ``LlamaTokenizer`` over a sentencepiece
    tokenizer.model. None: leave it as it is."""
    if written is None or written not in _V5_ONLY_TOKENIZERS:
        return written
    if source and source not in _V5_ONLY_TOKENIZERS:
        return source
    if has_tokenizer_json:
        return "PreTrainedTokenizerFast"
    if has_sentencepiece_model:
        return "LlamaTokenizer"
    log.warning("tokenizer_config.json names %s, which transformers 4.x does not know, and no tokenizer.json or "
                "tokenizer.model is there to name another class", written)
    return written


def add_legacy_config_keys(config: dict) -> dict:
    """Beside the transformers-5 keys of a config.json dict, in place, the transformers-4 ones:
    ``rope_theta`` (and ``partial_rotary_factor``) from ``rope_parameters``, ``rope_scaling``
    where the RoPE type is not ``default`` (transformers 5 reads ``rope_scaling`` back as
    ``rope_parameters``, merging ``rope_theta`` in), ``torch_dtype`` = ``dtype``."""
    if config.get("dtype") is not None:
        config["torch_dtype"] = config["dtype"]
    rp = config.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" in rp:  # one set for every layer (not per layer type)
        config["rope_theta"] = rp["rope_theta"]
        if rp.get("partial_rotary_factor") is not None:
            config["partial_rotary_factor"] = rp["partial_rotary_factor"]
        rope_type = rp.get("rope_type", rp.get("type", "default"))
        if rope_type != "default":
            config["rope_scaling"] = {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor")}
        else:
            config.pop("rope_scaling", None)
    elif isinstance(rp, dict) and rp:
        log.warning("config.json: rope_parameters differ per layer type (%s): no transformers-4 rope keys are written",
                    ", ".join(sorted(rp)))
    return config
