"""TextEncoder against sentence-transformers, offline loading, the embedding cache, the LoRA classifier."""

from __future__ import annotations

import socket

import pytest
import torch

from modelloop.errors import InputError
from modelloop.models.text_encoder import (
    EmbeddingCache,
    MiniLMClassifier,
    TextEncoder,
    encode_cached,
    resolve_encoder,
)

# ~50 texts of very different lengths: empty, one word, typical review snippets, and one far past
# the 256-token limit (truncation must match sentence-transformers' max_seq_length=256).
_BASE = [
    "A gripping, beautifully shot thriller.",
    "Dull.",
    "",
    "The plot meanders for two hours and the ending makes no sense at all, but the lead actor is wonderful.",
    "I laughed, I cried, I bought the soundtrack on the way home.",
    "Not worth the price of the popcorn.",
    "An ambitious mess that nonetheless sticks with you long after the credits roll, for better or worse.",
    "Wow",
    "Its heart is in the right place even when its script is not.",
    "A quiet film about grief, told with patience and grace; the final scene is devastating.",
]
TEXTS = [f"{t} ({i})" if i >= 10 else t for i, t in enumerate(_BASE * 5)]
TEXTS[17] = "a very long review that goes on and on " * 60  # ~480 tokens


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(batch_size=8).load()


@pytest.fixture(scope="module")
def classifier() -> MiniLMClassifier:
    torch.manual_seed(0)
    return MiniLMClassifier({"encoder": "all-MiniLM-L6-v2", "num_classes": 3, "r": 4, "alpha": 8,
                             "dropout": 0.1, "max_length": 32})


def test_encode_matches_sentence_transformers_and_keeps_order(encoder: TextEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(resolve_encoder(), device="cpu").encode(TEXTS, convert_to_tensor=True)
    got = encoder.encode(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == torch.float32 and encoder.dim == 384
    # Row-by-row cosine: a permutation from bucketing would show up as a low cosine somewhere.
    assert torch.nn.functional.cosine_similarity(got, reference).min() > 0.9999
    assert (got - reference).abs().max() < 1e-4
    assert torch.allclose(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    # Encoding a single text alone (no neighbours, no padding) gives the same vector as in a batch.
    for i in (0, 2, 17):
        assert torch.allclose(encoder.encode([TEXTS[i]])[0], got[i], atol=1e-5)


def test_truncation_at_max_length(encoder: TextEncoder) -> None:
    assert len(encoder.tokenize([TEXTS[17]])[0]) == encoder.max_length == 256


def test_loads_with_sockets_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    enc = TextEncoder("sentence-transformers/all-MiniLM-L6-v2").load()
    assert enc.encode(["offline works"]).shape == (1, 384)


def test_cache_computes_only_misses(tmp_path, encoder: TextEncoder) -> None:
    cache = EmbeddingCache(tmp_path / "emb")
    first = encode_cached(encoder, TEXTS[:12], cache)
    assert (cache.hits, cache.misses) == (0, 12)
    assert torch.allclose(first, encoder.encode(TEXTS[:12]), atol=1e-6)
    # Second call: everything from disk; a superset computes only the new texts (and duplicates once).
    again = encode_cached(encoder, TEXTS[:12], cache)
    assert (cache.hits, cache.misses) == (12, 12) and torch.equal(again, first)
    encode_cached(encoder, TEXTS[:12] + ["brand new", "brand new"], cache)
    assert cache.misses == 13
    # Another process (a fresh cache object on the same folder) sees the shards.
    other = EmbeddingCache(tmp_path / "emb")
    assert torch.equal(encode_cached(encoder, TEXTS[:12], other), first) and other.misses == 0
    assert not list((tmp_path / "emb").glob("*.tmp"))


def test_cache_key_depends_on_model_and_max_length(tmp_path) -> None:
    k = EmbeddingCache.key
    assert k("m", 256, "text") != k("m", 128, "text") != k("other", 256, "text")
    assert k("m", 256, "ab") != k("m", 256, "a") and k("ab", 1, "c") != k("a", 1, "bc")
    cache = EmbeddingCache(tmp_path)
    short = TextEncoder(max_length=16, batch_size=8)
    encode_cached(short, TEXTS[:4], cache)
    assert cache.misses == 4
    # Both spellings of the shipped model share keys; another max_length does not.
    encode_cached(TextEncoder("sentence-transformers/all-MiniLM-L6-v2", max_length=16), TEXTS[:4], cache)
    assert cache.misses == 4
    encode_cached(TextEncoder(max_length=32, batch_size=8), TEXTS[:4], cache)
    assert cache.misses == 8


def test_classifier_shapes_and_trainable_params(classifier: MiniLMClassifier) -> None:
    x = classifier.tokenize(TEXTS[:6])
    assert x.dtype == torch.long and x.shape[:2] == (6, 2) and x.shape[2] <= 32
    classifier.eval()
    with torch.no_grad():
        assert classifier(x).shape == (6, 3)
    trainable = [n for n, p in classifier.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(".query.lora_A" in n for n in trainable) and any(".value.lora_B" in n for n in trainable)
    assert not any(".key." in n for n in trainable)
    assert set(classifier.trainable_state_dict()) == set(trainable)
    with pytest.raises(InputError, match=r"\(N, 2, L\)"):
        classifier(x[:, 0])


def test_classifier_trainable_state_round_trip(classifier: MiniLMClassifier) -> None:
    x = classifier.tokenize(TEXTS[:6])
    # One real training step so LoRA B is no longer zero and the state carries information.
    classifier.train()
    opt = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(classifier(x), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    opt.step()
    classifier.eval()
    state = classifier.trainable_state_dict()
    with torch.no_grad():
        expected = classifier(x)
        fresh = MiniLMClassifier(classifier.get_config())
        fresh.eval()
        assert not torch.allclose(fresh(x), expected)
        fresh.load_trainable_state(state)
        assert torch.equal(fresh(x), expected)
    with pytest.raises(InputError, match="missing"):
        fresh.load_trainable_state({k: v for k, v in list(state.items())[1:]})


@pytest.mark.parametrize(("name", "match"), [
    ("/no/such/model/dir", "no such directory"),
    ("", "expected a model name"),
])
def test_bad_encoder_names(name: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        resolve_encoder(name)


def test_local_dir_without_config(tmp_path) -> None:
    with pytest.raises(InputError, match="config.json"):
        TextEncoder(str(tmp_path))


def test_local_dir_and_hub_names_resolve(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_encoder(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_encoder("someone/some-model") == "someone/some-model"
    assert resolve_encoder("all-MiniLM-L6-v2").endswith("model")


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="max_length"):
        TextEncoder(max_length=0)
    with pytest.raises(InputError, match="texts"):
        TextEncoder().encode("not a list")
    with pytest.raises(InputError, match="'num_classes'"):
        MiniLMClassifier({"encoder": "all-MiniLM-L6-v2", "num_classes": 1})
    with pytest.raises(InputError, match="unknown field"):
        MiniLMClassifier({"num_classes": 2, "rank": 8})
