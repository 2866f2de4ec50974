"""Document functions for llmctl's offline lm-eval tasks: turn the usual local layouts into the
layout lm-eval's standard task reads, then hand over to lm-eval's own functions (never a copy).

Examples:
    hellaswag_docs(datasets.load_dataset("json", data_files=...)["validation"])
"""

from __future__ import annotations

import re

from lm_eval.tasks.hellaswag.utils import process_docs as _hellaswag_process_docs
from lm_eval.tasks.wikitext import preprocess_wikitext as _wikitext
from lm_eval.tasks.winogrande import preprocess_winogrande as _winogrande

MMLU_LETTERS = ["A", "B", "C", "D"]


def _columns(dataset) -> list[str]:
    return list(dataset.column_names)


def hellaswag_docs(dataset):
    """HellaSwag original jsonl and the Hugging Face layout share fields; lm-eval's process_docs applies."""
    return _hellaswag_process_docs(dataset)


def arc_docs(dataset):
    """AI2 ARC jsonl (question.stem / question.choices[{text,label}]) → HF layout; HF layout unchanged."""
    if "question" in dataset.features and isinstance(dataset.features["question"], dict):

        def convert(doc):
            q = doc["question"]
            return {
                "id": doc.get("id", ""),
                "question": q["stem"],
                "choices": {
                    "text": [c["text"] for c in q["choices"]],
                    "label": [str(c["label"]) for c in q["choices"]],
                },
                "answerKey": str(doc["answerKey"]),
            }

        return dataset.map(convert, remove_columns=_columns(dataset))
    return dataset


def piqa_docs(dataset):
    """PIQA: labels as ints (the original release keeps them in a separate .lst file, merged by llmctl)."""
    if "label" in dataset.features and dataset.features["label"].dtype != "int64":
        return dataset.map(lambda d: {"label": int(d["label"])})
    return dataset


def winogrande_docs(dataset):
    """WinoGrande: `answer` as the string "1"/"2", as in the Hugging Face and original layouts."""
    if "answer" in dataset.features and dataset.features["answer"].dtype != "string":
        return dataset.map(lambda d: {"answer": str(d["answer"])})
    return dataset


winogrande_doc_to_text = _winogrande.doc_to_text
winogrande_doc_to_target = _winogrande.doc_to_target
winogrande_doc_to_choice = _winogrande.doc_to_choice
wikitext_detokenizer = _wikitext.wikitext_detokenizer
wikitext_process_results = _wikitext.process_results


def mmlu_docs(dataset, subject: str):
    """MMLU rows of one subject in the HF layout (question, subject, choices[4], answer 0-3).

    Also reads the original CSV layout (question, A, B, C, D, answer letter; read with those column names).
    """
    cols = _columns(dataset)
    if "subject" in cols:
        dataset = dataset.filter(lambda d: d["subject"] == subject)
    if "choices" not in cols and all(k in cols for k in MMLU_LETTERS):

        def convert(doc):
            answer = doc["answer"]
            answer = (
                MMLU_LETTERS.index(answer.strip())
                if isinstance(answer, str) and not answer.strip().isdigit()
                else int(answer)
            )
            return {
                "question": doc["question"],
                "subject": subject,
                "choices": [str(doc[k]) for k in MMLU_LETTERS],
                "answer": answer,
            }

        dataset = dataset.map(convert, remove_columns=cols)
    elif "answer" in cols and dataset.features["answer"].dtype == "string":
        dataset = dataset.map(
            lambda d: {
                "answer": MMLU_LETTERS.index(d["answer"].strip())
                if not d["answer"].strip().isdigit()
                else int(d["answer"])
            }
        )
    return dataset


def __getattr__(name: str):
    """`mmlu_docs_<subject>`: the per-subject process_docs a generated MMLU task names."""
    match = re.fullmatch(r"mmlu_docs_(\w+)", name)
    if match:
        subject = match.group(1)

        def process(dataset):
            return mmlu_docs(dataset, subject)

        process.__name__ = name
        return process
    raise AttributeError(name)
