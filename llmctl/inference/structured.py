"""Structured output: JSON — any object, or values of one JSON schema — enforced while decoding, by llguidance.

OpenAI's `response_format` (`json_object`, `json_schema`) becomes an llguidance grammar; each constrained
sequence has its own matcher, which masks the logits of every token that cannot continue valid JSON before
the sampler sees them, and consumes the token chosen. The answer ends (finish "stop") when the grammar is
complete, so a small model returns JSON that parses and fits the schema, or is cut by max_tokens.
Whitespace between tokens is not free (compact JSON): a model cannot wander off in spaces and newlines.

Why llguidance: a maintained grammar engine (the guidance project's; vLLM and llama.cpp can use it as a
structured-output backend) that installs as one wheel with no dependencies. xgrammar 0.2.9's wheel requires
triton and apache-tvm-ffi (GPU compilers) even on a CPU machine, so it was not taken; outlines-core was not
measured. Per-token overhead against free decoding: benchmarks/structured.py.

Examples:
    grammar = json_grammar({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    c = Constraint(ll_tokenizer(tokenizer, vocab), grammar, vocab)
    token = pick(c.mask(logits)); c.accept(token); c.done
"""

from __future__ import annotations

import json

ENGINE = "llguidance"
# compact JSON: no free whitespace between tokens (a random or small model would otherwise emit it forever)
_COMPACT = {"whitespace_flexible": False}


def json_grammar(schema: dict | None) -> str:
    """The grammar of a JSON object (schema None: any object) or of schema; ValueError naming the problem.

    Examples:
        json_grammar(None)                       # any JSON object
        json_grammar({"type": "array"})          # a JSON array
    """
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema({"type": "object"} if schema is None else schema, _COMPACT)
    except Exception as exc:  # llguidance raises ValueError/RuntimeError with the schema's problem
        raise ValueError(f"the JSON schema cannot be used: {str(exc).splitlines()[0][:300]}") from None
    problem = LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise ValueError(f"the JSON schema cannot be used: {problem.splitlines()[0][:300]}")
    return grammar


def schema_text(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True)


def ll_tokenizer(hf_tokenizer, vocab: int):
    """llguidance's view of a transformers tokenizer, sized to the model's logits (vocab rows)."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab)


class Constraint:
    """One sequence's grammar matcher: mask the next token's logits, accept the token chosen."""

    def __init__(self, tokenizer, grammar: str, vocab: int):
        from llguidance import LLMatcher
        from llguidance.torch import allocate_token_bitmask

        self.matcher = LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())
        self.bitmask = allocate_token_bitmask(1, vocab)

    def mask(self, logits):
        """A float copy of (vocab,) logits with every token the grammar forbids at -inf."""
        from llguidance.torch import apply_token_bitmask_inplace, fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        out = logits.float().clone().unsqueeze(0)
        apply_token_bitmask_inplace(out, self.bitmask.to(out.device))
        return out[0]

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The JSON is complete: nothing but end-of-sequence may follow."""
        return self.matcher.is_stopped()
