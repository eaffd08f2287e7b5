"""Data layer: JSONL validation, hygiene, tfds round trips, fixed-shape arrays, batching."""

import json
import os
import sys

import numpy as np
import pytest

from instructgpt_jax import data
from instructgpt_jax.data import DataError, Hygiene
from instructgpt_jax.tokenizer import Tokenizer, train_tokenizer
from tests import helpers

# ----------------------------------------------------------------------------- helpers


def write_jsonl(path, rows) -> str:
  # latin-1 strings from BAD_LINES become raw (invalid UTF-8) bytes; others are ASCII JSON.
  with open(path, "w", encoding="latin-1") as f:
    for row in rows:
      f.write(row if isinstance(row, str) else json.dumps(row))
      f.write("\n")
  return str(path)


def demo(i, user="u0"):
  return {
    "prompt": f"prompt number {i}",
    "response": f"answer {i} é ✓",
    "user_id": user,
    "category": "open qa",
  }


def comparison(i, user="u0"):
  return {
    "prompt": f"prompt {i}",
    "responses": ["yes", "no", "maybe"],
    "ranking": [0, 2, 1],
    "user_id": user,
    "sources": ["sft:1.0", "sft:0.7", "base_fewshot:1.0"],  # Optional.
  }


VALID = {
  "demonstrations": demo,
  "comparisons": comparison,
  "prompts": lambda i, user="u0": {
    "prompt": f"prompt number {i}",
    "user_id": user,
    "category": "generation",
  },
  "pretraining": lambda i, user=None: {"text": f"some text {i}"},
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
  texts = [f"prompt number {i} answer yes no maybe some text the fox" for i in range(200)]
  return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "t.model"), vocab_size=330)


# ----------------------------------------------------------------------------- JSONL


@pytest.mark.parametrize("kind", data.KINDS)
def test_read_valid_files_skipping_blank_lines(tmp_path, kind):
  path = write_jsonl(tmp_path / "x.jsonl", [VALID[kind](0), "", "   ", VALID[kind](1)])
  records = data.read_jsonl(path, kind)
  assert len(records) == 2
  assert records[1] == {k: v for k, v in VALID[kind](1).items()}


def test_optional_category_and_integer_user_id(tmp_path):
  path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "user_id": 7}])
  assert data.read_jsonl(path, "prompts") == [{"prompt": "p", "user_id": "7", "category": ""}]


BAD_LINES = [
  ("demonstrations", '{"prompt": "p", "response": ', "invalid JSON"),
  ("demonstrations", {"prompt": "p", "user_id": "u"}, "missing field 'response'"),
  ("demonstrations", {"prompt": "p", "response": "  ", "user_id": "u"}, "'response' is empty"),
  ("demonstrations", {"prompt": 3, "response": "r", "user_id": "u"}, "'prompt' must be a string"),
  ("demonstrations", ["a list"], "expected a JSON object"),
  ("prompts", {"prompt": "", "user_id": "u"}, "'prompt' is empty"),
  ("prompts", {"prompt": "p"}, "missing field 'user_id'"),
  (
    "comparisons",
    {"prompt": "p", "responses": ["a", "b"], "ranking": [0], "user_id": "u"},
    "'ranking' has 1 entries but 'responses' has 2",
  ),
  (
    "comparisons",
    {"prompt": "p", "responses": ["a"], "ranking": [0], "user_id": "u"},
    "expected 2..9",
  ),
  (
    "comparisons",
    {"prompt": "p", "responses": ["a", ""], "ranking": [0, 1], "user_id": "u"},
    r"responses\[1\] is empty",
  ),
  (
    "comparisons",
    {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 5], "user_id": "u"},
    "outside",
  ),
  (
    "comparisons",
    {"prompt": "p", "responses": "ab", "ranking": [0, 1], "user_id": "u"},
    "must be a list",
  ),
  ("pretraining", {"text": ""}, "'text' is empty"),
  ("pretraining", {"txt": "x"}, "missing field 'text'"),
  ("pretraining", b'{"text": "\xff"}'.decode("latin-1"), "not UTF-8"),
]


@pytest.mark.parametrize("kind,bad,cause", BAD_LINES)
def test_malformed_line_names_file_line_and_cause(tmp_path, kind, bad, cause):
  # Line 3 is bad (line 2 is blank and still counts as a line).
  path = write_jsonl(tmp_path / "bad.jsonl", [VALID[kind](0), "", bad, VALID[kind](1)])
  with pytest.raises(DataError, match=cause) as e:
    data.read_jsonl(path, kind)
  assert f"{path}:3:" in str(e.value)
  assert isinstance(e.value, ValueError)


# ----------------------------------------------------------------------------- hygiene


def test_dedup_by_prefix_keeps_first():
  records = [
    {"prompt": p}
    for p in [
      "Write a poem about the sea, please",
      "Write  a poem about the sea, in French",  # same 20-char prefix modulo whitespace
      "Write a story",
      "Write a story",  # exact duplicate of a short prompt
      "Write a story about a cat",  # short prompt is a prefix but < 20 chars in common
    ]
  ]
  kept, dropped = data.dedup_by_prefix(records, 20, "chars")
  assert [r["prompt"] for r in kept] == [
    records[0]["prompt"],
    "Write a story",
    "Write a story about a cat",
  ]
  assert dropped == 2
  kept, dropped = data.dedup_by_prefix(records, 3, "words")  # "Write a poem" / "Write a story"
  assert [r["prompt"] for r in kept] == [records[0]["prompt"], "Write a story"]
  assert dropped == 3
  assert data.dedup_by_prefix(records, None) == (records, 0)


def test_cap_per_user():
  records = [{"user_id": "a", "i": i} for i in range(250)] + [
    {"user_id": "b", "i": i} for i in range(5)
  ]
  kept, dropped = data.cap_per_user(records, 200)
  assert dropped == 50
  assert [r["i"] for r in kept if r["user_id"] == "a"] == list(range(200))  # the first ones
  assert sum(r["user_id"] == "b" for r in kept) == 5
  assert data.cap_per_user(records, 3)[1] == 247 + 2


def test_split_by_user_is_disjoint_deterministic_and_proportional():
  records = [{"user_id": f"user{u}", "i": i} for u in range(1000) for i in range(2)]
  splits = data.split_by_user(records, (0.8, 0.1, 0.1))
  users = {s: {r["user_id"] for r in rows} for s, rows in splits.items()}
  assert not users["train"] & users["validation"]
  assert not users["train"] & users["test"]
  assert not users["validation"] & users["test"]
  assert sum(len(v) for v in splits.values()) == len(records)
  assert 700 < len(users["train"]) < 900 and 50 < len(users["test"]) < 150
  assert data.split_by_user(records, (0.8, 0.1, 0.1)) == splits  # deterministic
  assert data.split_by_user(records, (0.8, 0.1, 0.1), salt="other") != splits
  # The same user lands in the same split whatever else is in the file.
  split = data.assign_split("user3", (0.8, 0.1, 0.1))
  assert data.split_by_user([{"user_id": "user3"}], (0.8, 0.1, 0.1))[split] == [
    {"user_id": "user3"}
  ]
  assert "user3" in users[split]


def test_apply_hygiene_counts_everything():
  records = [demo(i % 10, user=f"u{i % 3}") for i in range(30)] + [
    demo(100 + i, "heavy") for i in range(8)
  ]
  splits, counts = data.apply_hygiene(records, "demonstrations", Hygiene(max_per_user=5))
  assert counts["read"] == 38
  assert counts["dropped_duplicate_prefix"] == 20
  assert counts["dropped_user_cap"] == 3
  assert sum(counts[s] for s in data.SPLITS) == 38 - 20 - 3 == sum(len(v) for v in splits.values())


def test_hygiene_rejects_bad_fractions():
  with pytest.raises(ValueError, match="sum"):
    Hygiene(split_fractions=(0.5, 0.1, 0.1))
  assert Hygiene(split_fractions=[0.5, 0.25, 0.25]).split_fractions == (0.5, 0.25, 0.25)


# ----------------------------------------------------------------------------- tfds


@pytest.mark.parametrize("kind", data.KINDS)
def test_tfds_prepare_and_read_round_trip(tmp_path, kind):
  rows = [VALID[kind](i, user=f"user{i % 40}") for i in range(300)]
  path = write_jsonl(tmp_path / f"{kind}.jsonl", rows)
  data_dir = str(tmp_path / "tfds")
  loaded = {s: data.load_split(kind, path, data_dir, s) for s in data.SPLITS}
  assert "tensorflow" not in sys.modules

  # Every record comes back exactly once, unchanged, in file order within a split.
  everything = sorted((r for s in data.SPLITS for r in loaded[s]), key=lambda r: r["index"])
  assert [{k: v for k, v in r.items() if k != "index"} for r in everything] == data.read_jsonl(
    path, kind
  )
  for split_rows in loaded.values():
    assert [r["index"] for r in split_rows] == sorted(r["index"] for r in split_rows)
  if kind != "pretraining":
    users = [{r["user_id"] for r in loaded[s]} for s in data.SPLITS]
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
  assert len(loaded["train"]) > len(loaded["test"])

  files = os.listdir(data.make_builder(kind, path, data_dir).data_dir)
  assert any(".array_record" in f for f in files)


def test_tfds_reuses_unchanged_and_reprepares_changed_file(tmp_path, monkeypatch):
  path = write_jsonl(tmp_path / "demos.jsonl", [demo(i, f"u{i}") for i in range(20)])
  data_dir = str(tmp_path / "tfds")
  first = data.prepare("demonstrations", path, data_dir)
  assert helpers.hygiene_counts(first)["read"] == 20

  calls = []
  original = data.read_jsonl
  monkeypatch.setattr(data, "read_jsonl", lambda *a: calls.append(a) or original(*a))
  again = data.prepare("demonstrations", path, data_dir)
  assert again.data_dir == first.data_dir and calls == []  # reused, not re-read
  assert helpers.hygiene_counts(again)["read"] == 20  # counts survive reuse

  write_jsonl(path, [demo(i, f"u{i}") for i in range(25)])  # same path, new content
  changed = data.prepare("demonstrations", path, data_dir)
  assert changed.data_dir != first.data_dir and len(calls) == 1
  assert sum(len(data.load_split("demonstrations", path, data_dir, s)) for s in data.SPLITS) == 25

  other = data.prepare("demonstrations", path, data_dir, Hygiene(max_per_user=1))
  assert other.data_dir != changed.data_dir  # hygiene settings are part of the identity


def test_tfds_data_source_by_name_and_empty_split(tmp_path):
  # One user: every record lands in one split and the other two are empty.
  path = write_jsonl(tmp_path / "p.jsonl", [VALID["prompts"](i, "solo") for i in range(5)])
  builder = data.prepare("prompts", path, str(tmp_path / "tfds"))
  split = data.assign_split("solo", Hygiene().split_fractions)
  source = data.tfds.data_source(
    f"{builder.name}/{builder.builder_config.name}", data_dir=str(tmp_path / "tfds")
  )
  assert len(source[split]) == 5
  for s in data.SPLITS:
    assert len(data.load_split("prompts", path, str(tmp_path / "tfds"), s)) == (
      5 if s == split else 0
    )
  assert "tensorflow" not in sys.modules


# ----------------------------------------------------------------------------- encoding


def test_encode_prompts_left_pads_and_drops_long(tok):
  prompts = ["prompt number 1", "prompt " * 30, "yes"]
  out = data.encode_prompts(tok, prompts, P=8)
  assert out.tokens.shape == out.mask.shape == (2, 8) and out.tokens.dtype == np.int32
  assert out.n_dropped == 1 and out.kept.tolist() == [0, 2]
  for row, text in zip(range(2), ["prompt number 1", "yes"]):
    ids = [tok.bos_id] + tok.encode(text)
    assert out.tokens[row, -len(ids) :].tolist() == ids  # right-aligned, BOS first
    assert (out.tokens[row, : 8 - len(ids)] == tok.pad_id).all()
    assert out.mask[row].tolist() == [0] * (8 - len(ids)) + [1] * len(ids)
  tokens, mask, n_dropped, kept = out  # also unpacks like a tuple


def test_encode_sft_layout_and_loss_mask(tok):
  P, R = 8, 6
  out = data.encode_sft(
    tok, ["prompt number 1", "prompt " * 30, "yes"], ["answer 1", "no", "yes " * 20], P, R
  )
  assert (
    out["n_dropped_prompt"] == 1 and out["n_dropped_response"] == 1 and out["kept"].tolist() == [0]
  )
  for key in ("tokens", "mask", "loss_mask"):
    assert out[key].shape == (1, P + R) and out[key].dtype == np.int32
  prompt = [tok.bos_id] + tok.encode("prompt number 1")
  response = tok.encode("answer 1") + [tok.eos_id]
  expected = (
    [tok.pad_id] * (P - len(prompt)) + prompt + response + [tok.pad_id] * (R - len(response))
  )
  assert out["tokens"][0].tolist() == expected
  assert out["mask"][0].tolist() == [int(t != tok.pad_id) for t in expected]
  assert out["loss_mask"][0].tolist() == [0] * P + [1] * len(response) + [0] * (R - len(response))
  assert tok.decode(out["tokens"][0, P:]) == "answer 1"


def test_encode_sft_exact_fit_is_kept(tok):
  response = tok.encode("answer 1")
  out = data.encode_sft(tok, ["yes"], ["answer 1"], P=2, R=len(response) + 1)
  assert out["kept"].tolist() == [0] and out["tokens"][0, -1] == tok.eos_id


def test_encode_comparisons(tok):
  P, R, K = 8, 4, 5
  out = data.encode_comparisons(
    tok,
    ["prompt 1", "prompt 2", "prompt " * 30, "prompt 3"],
    [["yes", "no", "maybe " * 10], ["yes", "no"], ["yes", "no"], ["yes", "maybe " * 10]],
    [[1, 0, 2], [0, 0], [0, 1], [0, 1]],
    P,
    R,
    K_max=K,
  )
  # Row 1 is all tied, row 2's prompt is too long, row 3 keeps one response only.
  assert out["kept"].tolist() == [0]
  assert (out["n_dropped_prompt"], out["n_dropped_responses"], out["n_dropped_no_pairs"]) == (
    1,
    2,
    2,
  )
  assert out["tokens"].shape == out["mask"].shape == (1, K, P + R)
  assert out["ranks"].tolist() == [[1, 0, -1, -1, -1]]
  assert (out["tokens"][0, 2:] == tok.pad_id).all() and (out["mask"][0, 2:] == 0).all()
  prompt = [tok.bos_id] + tok.encode("prompt 1")
  for k, text in enumerate(["yes", "no"]):
    assert out["tokens"][0, k, P - len(prompt) : P].tolist() == prompt
    response = tok.encode(text) + [tok.eos_id]
    assert out["tokens"][0, k, P : P + len(response)].tolist() == response
  with pytest.raises(ValueError, match="K_max"):
    data.encode_comparisons(tok, ["p"], [["a", "b", "c"]], [[0, 1, 2]], P, R, K_max=2)


def test_pack_lm(tok):
  texts = ["some text 1", "the fox", "yes"]
  out = data.pack_lm(tok, texts, seq_len=5)
  stream = [t for s in texts for t in [tok.bos_id, *tok.encode(s), tok.eos_id]]
  n = -(-len(stream) // 5)
  assert out["tokens"].shape == out["mask"].shape == (n, 5)
  assert out["tokens"].reshape(-1)[: len(stream)].tolist() == stream
  assert out["mask"].reshape(-1).tolist() == [1] * len(stream) + [0] * (n * 5 - len(stream))
  assert (out["tokens"].reshape(-1)[len(stream) :] == tok.pad_id).all()


# ----------------------------------------------------------------------------- batching


def arrays(n=10):
  return {"x": np.arange(n, dtype=np.int32), "y": np.arange(n * 3).reshape(n, 3), "n_dropped": 4}


def take(it, k):
  return [next(it) for _ in range(k)]


def test_batches_are_deterministic_and_shuffled_per_epoch():
  a = take(data.make_batches(arrays(), 5, seed=1), 6)
  b = take(data.make_batches(arrays(), 5, seed=1), 6)
  c = take(data.make_batches(arrays(), 5, seed=2), 6)
  assert all((p["x"] == q["x"]).all() for p, q in zip(a, b))
  assert any((p["x"] != q["x"]).any() for p, q in zip(a, c))
  for epoch in range(3):  # each epoch is a permutation; the order changes between epochs
    assert sorted(np.concatenate([a[2 * epoch]["x"], a[2 * epoch + 1]["x"]]).tolist()) == list(
      range(10)
    )
  assert a[0]["y"].shape == (5, 3) and (a[0]["y"][:, 0] == a[0]["x"] * 3).all()
  assert set(a[0]) == {"x", "y"}  # non-array entries (counts) are ignored


def test_batches_state_save_and_restore():
  it = data.make_batches(arrays(), 4, seed=7)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  expected = take(it, 6)
  restored = data.make_batches(arrays(), 4, seed=7)
  restored.set_state(state)
  assert all((p["x"] == q["x"]).all() for p, q in zip(expected, take(restored, 6)))


def test_finite_epochs_unshuffled_and_remainder():
  batches = list(
    data.make_batches(arrays(), 4, seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
  )
  assert [b["x"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert len(list(data.make_batches(arrays(), 4, seed=0, num_epochs=2))) == 5
  with pytest.raises(ValueError, match="0 examples"):
    data.make_batches(arrays(0), 4, seed=0)


def test_process_slices_partition_the_global_batch():
  parts = [
    take(data.make_batches(arrays(), 4, seed=3, local_rows=rows), 5)
    for rows in (slice(0, 2), slice(2, 4))
  ]
  whole = take(data.make_batches(arrays(), 4, seed=3), 5)
  for b0, b1, w in zip(*parts, whole):
    assert np.concatenate([b0["x"], b1["x"]]).tolist() == w["x"].tolist()
  # One epoch (10 examples, 2 batches of 4 and a cut remainder): no example is fed twice,
  # by the same process or by both.
  fed = [x for part in parts for b in part[:2] for x in b["x"].tolist()]
  assert len(fed) == len(set(fed)) == 8
  with pytest.raises(ValueError, match="not a part"):
    data.make_batches(arrays(), 4, seed=3, local_rows=slice(2, 6))


def test_iterate_split_batches_covers_each_example_once():
  batches = list(data.iterate_split_batches(arrays(), 4))
  assert [b["x"].shape for b in batches] == [(4,)] * 3
  valid = np.concatenate([b["valid"] for b in batches])
  assert np.concatenate([b["x"] for b in batches])[valid == 1].tolist() == list(range(10))


def test_comparisons_keep_their_optional_sources(tmp_path):
  rows = [comparison(i, user=f"u{i}") for i in range(4)]
  # A file may leave sources out, row by row: they read back as [].
  rows.append({k: v for k, v in comparison(9, user="u9").items() if k != "sources"})
  path = tmp_path / "c.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert [r["sources"] for r in data.read_jsonl(str(path), "comparisons")] == [
    r.get("sources", []) for r in rows
  ]
  loaded = [
    r for s in data.SPLITS for r in data.load_split("comparisons", str(path), str(tmp_path), s)
  ]
  assert sorted((r["prompt"], tuple(r["sources"])) for r in loaded) == sorted(
    (r["prompt"], tuple(r.get("sources", []))) for r in rows
  )
  for bad, match in (
    (["sft:1.0"], "'sources' has 1 entries"),
    ("sft", "list of strings"),
    ([1, 2, 3], "list of strings"),
  ):
    with pytest.raises(data.DataError, match=match):
      data.validate_record(dict(comparison(0), sources=bad), "comparisons")


def test_encode_comparisons_slots_map_back_to_the_responses(tok):
  out = data.encode_comparisons(
    tok, ["prompt 1"], [["maybe " * 10, "yes", "no"]], [[0, 1, 2]], P=8, R=4, K_max=4
  )
  # The first response is too long: slots 0 and 1 hold responses 1 and 2.
  assert out["slots"].tolist() == [[1, 2, -1, -1]] and out["ranks"].tolist() == [[1, 2, -1, -1]]
