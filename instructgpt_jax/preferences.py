"""Public preference and chat formats, turned into the project's own records line by line.

`data.validate_record` calls `to_comparison` for a comparisons line that is not in the project's
own K-way format, and `to_demonstration` / `prompt_text` for message lists, so every format goes
through the same tfds builders, hygiene (prefix de-duplication, per-user cap, split by user) and
"<file>:<line>: <cause>" errors. Recognised comparison lines:

  pairwise   {"prompt": str | [messages], "chosen": str | [messages], "rejected": ...}
             (TRL's explicit- and implicit-prompt forms; ranking [0, 1])
  HH         {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: A", "rejected": "...\\n\\nAssistant: B"}
             (Anthropic HH-RLHF: the prompt is everything up to the last "\\n\\nAssistant:")
  rated      {"prompt" | "instruction": str, "completions": [{"response": str, "score": x}, ...]}
             or {"prompt", "responses": [...], "scores": [...]} (UltraFeedback-style; the score
             key may be score, overall_score or rating). Higher is better; equal scores tie.

A message list is rendered to text by a chat template when the run has one (an imported
checkpoint's), else as a plain transcript in the HH style ("\\n\\nHuman: ...\\n\\nAssistant:").
Records without a user_id get one derived from the prompt, so the split by user keeps every copy
of a prompt in one split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from instructgpt_jax.formats import MAX_RESPONSES, MIN_RESPONSES, DataError

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_ROLES = {"user": HUMAN, "human": HUMAN, "assistant": ASSISTANT, "system": "\n\nSystem:"}
SCORE_KEYS = ("score", "overall_score", "rating")
RESPONSE_KEYS = ("response", "text", "content")

# (messages, add_generation_prompt) -> text
Renderer = Callable[[Sequence[Mapping[str, Any]], bool], str]


def transcript(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
  """The plain renderer: an HH-style transcript ("\\n\\nHuman: hi\\n\\nAssistant:")."""
  text = "".join(f"{_ROLES[m['role']]} {m['content']}" for m in messages)
  return text + ASSISTANT if add_generation_prompt else text


def _messages(value: Any, field: str) -> list[dict[str, str]]:
  if not isinstance(value, list) or not value:
    raise DataError(f"field {field!r} must be a non-empty list of messages")
  out = []
  for i, m in enumerate(value):
    if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
      raise DataError(f"{field}[{i}] must be an object with a string 'content'")
    if m.get("role") not in _ROLES:
      raise DataError(f"{field}[{i}] has role {m.get('role')!r}; expected one of {list(_ROLES)}")
    out.append({"role": m["role"], "content": m["content"]})
  return out


def _text(value: Any, field: str) -> str:
  if not isinstance(value, str):
    raise DataError(f"field {field!r} must be a string, got {type(value).__name__}")
  if not value.strip():
    raise DataError(f"field {field!r} is empty")
  return value


def _split_conversation(
  messages: list[dict[str, str]], field: str
) -> tuple[list[dict[str, str]], str]:
  """(the messages before the final assistant turn, that turn's text)."""
  if messages[-1]["role"] != "assistant":
    raise DataError(f"the last message of {field!r} must be the assistant's")
  return messages[:-1], _text(messages[-1]["content"], f"{field}[-1].content")


def prompt_text(value: Any, render: Renderer, field: str = "prompt") -> str:
  """A prompt given as text or as messages (rendered, ready for the assistant's turn)."""
  if value is None:
    raise DataError(f"missing field {field!r}")
  if isinstance(value, list):
    return render(_messages(value, field), True)
  return _text(value, field)


def derived_user_id(prompt: str) -> str:
  return "prompt-" + hashlib.sha256(prompt.encode()).hexdigest()[:16]


def _user_id(obj: Mapping[str, Any], prompt: str) -> str:
  value = obj.get("user_id")
  if value is None:
    return derived_user_id(prompt)
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  return _text(value, "user_id")


def _split_hh(text: str, field: str) -> tuple[str, str]:
  cut = text.rfind(ASSISTANT)
  if cut < 0 or HUMAN not in text[:cut]:
    raise DataError(
      f"field {field!r} is not an HH transcript ('\\n\\nHuman: ... \\n\\nAssistant:')"
    )
  prompt, response = text[: cut + len(ASSISTANT)], text[cut + len(ASSISTANT) :].lstrip()
  return prompt, _text(response, f"{field} (its last Assistant turn)")


def _pairwise(obj: Mapping[str, Any], render: Renderer) -> tuple[str, list[str]]:
  chosen, rejected = obj["chosen"], obj.get("rejected")
  if rejected is None:
    raise DataError("missing field 'rejected'")
  if "prompt" not in obj and isinstance(chosen, str):  # Anthropic HH transcripts.
    prompt, a = _split_hh(_text(chosen, "chosen"), "chosen")
    prompt_b, b = _split_hh(_text(rejected, "rejected"), "rejected")
    if prompt != prompt_b:
      raise DataError("'chosen' and 'rejected' differ before their last Assistant turn")
    return prompt, [a, b]
  if isinstance(chosen, list) or isinstance(rejected, list):
    head_a, a = _split_conversation(_messages(chosen, "chosen"), "chosen")
    head_b, b = _split_conversation(_messages(rejected, "rejected"), "rejected")
    if head_a != head_b:
      raise DataError("'chosen' and 'rejected' differ before their last assistant message")
    before = _messages(obj["prompt"], "prompt") if "prompt" in obj else []
    if isinstance(obj.get("prompt"), str):
      raise DataError("'prompt' must be messages when 'chosen' and 'rejected' are")
    if not before + head_a:
      raise DataError("the conversation has no prompt before the assistant's answer")
    return render(before + head_a, True), [a, b]
  if "prompt" not in obj:
    raise DataError("missing field 'prompt' (or HH transcripts in 'chosen'/'rejected')")
  return prompt_text(obj["prompt"], render), [_text(chosen, "chosen"), _text(rejected, "rejected")]


def _score(value: Any, field: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise DataError(f"{field} must be a number, got {value!r}")
  return float(value)


def _rated(obj: Mapping[str, Any], render: Renderer) -> tuple[str, list[str], list[float]]:
  key = "prompt" if "prompt" in obj else "instruction"
  if key not in obj:
    raise DataError("missing field 'prompt' (or 'instruction')")
  prompt = prompt_text(obj[key], render, key)
  if "completions" in obj:
    completions = obj["completions"]
    if not isinstance(completions, list):
      raise DataError("field 'completions' must be a list")
    responses, scores = [], []
    for i, c in enumerate(completions):
      if not isinstance(c, Mapping):
        raise DataError(f"completions[{i}] must be an object")
      r_key = next((k for k in RESPONSE_KEYS if k in c), None)
      s_key = next((k for k in SCORE_KEYS if k in c), None)
      if r_key is None or s_key is None:
        raise DataError(
          f"completions[{i}] needs a response ({'/'.join(RESPONSE_KEYS)}) and a score "
          f"({'/'.join(SCORE_KEYS)})"
        )
      responses.append(_text(c[r_key], f"completions[{i}].{r_key}"))
      scores.append(_score(c[s_key], f"completions[{i}].{s_key}"))
  else:
    responses, scores = obj["responses"], obj.get("scores")
    if not isinstance(responses, list) or not isinstance(scores, list):
      raise DataError("fields 'responses' and 'scores' must be lists")
    if len(responses) != len(scores):
      raise DataError(f"'scores' has {len(scores)} entries but 'responses' has {len(responses)}")
    responses = [_text(r, f"responses[{i}]") for i, r in enumerate(responses)]
    scores = [_score(s, f"scores[{i}]") for i, s in enumerate(scores)]
  return prompt, responses, scores


def ranking_from_scores(scores: Sequence[float]) -> list[int]:
  """Dense ranks, 0 = best: [7, 9, 7, 1] -> [1, 0, 1, 2] (equal scores tie)."""
  order = sorted(set(scores), reverse=True)
  return [order.index(s) for s in scores]


def is_public_comparison(obj: Mapping[str, Any]) -> bool:
  return "chosen" in obj or "completions" in obj or ("scores" in obj and "responses" in obj)


def to_comparison(obj: Mapping[str, Any], render: Renderer = transcript) -> dict[str, Any]:
  """A pairwise, HH or rated line as {"prompt", "responses", "ranking", "user_id"}."""
  if "chosen" in obj:
    prompt, responses = _pairwise(obj, render)
    ranking = [0, 1]
  else:
    prompt, responses, scores = _rated(obj, render)
    ranking = ranking_from_scores(scores)
  if not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
    raise DataError(
      f"{len(responses)} completions; expected {MIN_RESPONSES}..{MAX_RESPONSES} per prompt"
    )
  return {
    "prompt": prompt,
    "responses": responses,
    "ranking": ranking,
    "user_id": _user_id(obj, prompt),
  }


def to_demonstration(obj: Mapping[str, Any], render: Renderer = transcript) -> dict[str, Any]:
  """{"messages": [..., assistant]} (or a message-list prompt with a "response") as a
  demonstration {"prompt", "response", "user_id", "category"}."""
  if "messages" in obj:
    head, response = _split_conversation(_messages(obj["messages"], "messages"), "messages")
    if not head:
      raise DataError("'messages' has no prompt before the assistant's answer")
    prompt = render(head, True)
  else:
    prompt = prompt_text(obj.get("prompt"), render)
    if "response" not in obj:
      raise DataError("missing field 'response' (or a 'messages' conversation)")
    response = _text(obj["response"], "response")
  category = obj.get("category") or ""
  if not isinstance(category, str):
    raise DataError("field 'category' must be a string")
  return {
    "prompt": prompt,
    "response": response,
    "user_id": _user_id(obj, prompt),
    "category": category,
  }
