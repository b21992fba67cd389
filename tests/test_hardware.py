"""The cache of measured choices: what another process wrote is read, what is malformed is measured again."""

from __future__ import annotations

import json
import time

from modelloop.hardware import ChoiceCache


def test_a_stale_choice_in_memory_gives_way_to_a_fresh_one_on_disk(tmp_path):
    path = tmp_path / "choices.json"
    mine = ChoiceCache(ttl_s=60, path=path)
    mine.put("k", {"threads": 1})
    mine._memory["k"] = (time.time() - 120, {"threads": 1})  # measured two minutes ago here
    ChoiceCache(ttl_s=60, path=path).put("k", {"threads": 2})  # another process measured it just now
    assert mine.get("k") == {"threads": 2}


def test_malformed_entries_are_measured_again_not_raised(tmp_path):
    path = tmp_path / "choices.json"
    path.write_text(json.dumps({"a": [None, {}], "b": ["soon", 1], "c": [True, 1], "d": "x",
                                "e": [time.time(), {"threads": 2}]}))
    cache = ChoiceCache(ttl_s=60, path=path)
    assert [cache.get(k) for k in "abcd"] == [None, None, None, None]
    assert cache.get("e") == {"threads": 2}
    cache.put("a", {"threads": 1})  # rewriting drops the malformed entries
    assert set(json.loads(path.read_text())) == {"a", "e"}
    path.write_text("{not json")
    assert ChoiceCache(ttl_s=60, path=path).get("e") is None


def test_the_cache_folder_is_created_and_left_as_the_user_set_it(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o775)
    shared.chmod(0o775)
    ChoiceCache(ttl_s=60, path=shared / "sub" / "choices.json").put("k", 1)
    assert (shared / "sub" / "choices.json").is_file()
    assert shared.stat().st_mode & 0o777 == 0o775
