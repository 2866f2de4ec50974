"""The writers of the export targets (llmctl/export/targets.py): each writes one job's output at `dest`.

Every writer takes the job (llmctl.export.service.Job: the source, its float or integer form, the type, bits and
chat template) and a destination that does not exist yet, inside a temp place the service renames or discards,
and returns facts for the registry entry and the report.

Examples:
    facts = gguf(job, Path(".out.tmp-1/smol.Q8_0.gguf"))
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from llmctl.config.dtypes import EXPORT_FLOAT_TYPES as _DTYPES  # export's float type → torch dtype name
from llmctl.errors import LlmctlError


def gguf(job, dest: Path) -> dict:
    """A GGUF model file (write_gguf), or with lora_gguf the adapter as a GGUF LoRA file (write_lora_gguf)."""
    from llmctl.export.chat_templates import family_jinja
    from llmctl.export.gguf_writer import write_gguf

    if job.config["lora_gguf"]:
        from llmctl.export.gguf_lora import write_lora_gguf

        return write_lora_gguf(
            Path(job.resolved.path), job.base_config(), dest, qtype=job.qtype, name=job.label, force=True
        )
    model, tokenizer = job.plain()
    family = job.template_family()
    return write_gguf(
        model,
        tokenizer,
        dest,
        job.qtype,
        name=job.label,
        force=True,
        chat_template=family_jinja(family) if family else None,
    )


def ollama(job, dest: Path) -> dict:
    """An Ollama folder: the GGUF file and a Modelfile whose TEMPLATE is the chat template the model uses."""
    from llmctl.export.ollama import write_ollama
    from llmctl.paths import temp_prefix

    gguf_tmp = dest.parent / f"{temp_prefix(dest)}model.gguf"
    facts = gguf(job, gguf_tmp)
    try:
        model, tokenizer = job.plain()
        modelfile = write_ollama(gguf_tmp, tokenizer, model.config, dest, template=job.template_family(), move=True)
    finally:
        gguf_tmp.unlink(missing_ok=True)
    facts.update(
        modelfile=modelfile["modelfile"],
        template=modelfile["template"],
        stops=modelfile["stops"],
        num_ctx=modelfile["num_ctx"],
        path=str(dest),
    )
    return facts


def hf(job, dest: Path) -> dict:
    """A plain safetensors folder in the asked dtype (adapters merged, quantized weights dequantized)."""
    import torch

    from llmctl.export.chat_templates import family_jinja

    model, tokenizer = job.plain()
    dtype = getattr(torch, _DTYPES[job.qtype])
    out = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    out.save_pretrained(dest, safe_serialization=True)
    family = job.template_family()
    if family:
        tokenizer = copy.copy(tokenizer)
        tokenizer.chat_template = family_jinja(family)
    tokenizer.save_pretrained(dest)
    return {"dtype": _DTYPES[job.qtype], "chat_template": family or "model"}


def compressed_tensors(job, dest: Path) -> dict:
    """The source's own codes, scales, zero points and channel order as a compressed-tensors folder."""
    from llmctl.models.formats import compressed_tensors as layout

    return layout.save(job.woq(), job.source().tokenizer, dest)


def gptq(job, dest: Path) -> dict:
    """The source's own codes, scales, zero points and channel order in the HF GPTQ layout."""
    from llmctl.models.formats import gptq as layout

    return layout.save(job.woq(), job.source().tokenizer, dest)


def openvino(job, dest: Path) -> dict:
    """An OpenVINO IR folder with NNCF weight compression, as `llmctl quantize --backend openvino` makes it."""
    from llmctl.models.formats.openvino import require_openvino
    from llmctl.paths import temp_prefix
    from llmctl.quantize.openvino import openvino_compress

    require_openvino()
    model, tokenizer = job.plain()
    src = dest.parent / f"{temp_prefix(dest)}hf-source"
    try:
        model.save_pretrained(src, safe_serialization=True)
        tokenizer.save_pretrained(src)
        cfg = {
            "bits": job.bits,
            "sym": True,
            "group_size": job.config["group_size"] if job.bits == 4 else -1,
            "openvino": {"awq": False, "scale_estimation": False, "ratio": 1.0},
        }
        openvino_compress(str(src), dest, cfg, None)
    except LlmctlError:
        raise
    finally:
        shutil.rmtree(src, ignore_errors=True)
    tokenizer.save_pretrained(dest)
    return {"bits": job.bits, "group_size": cfg["group_size"]}
