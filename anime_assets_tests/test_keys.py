import pytest

from anime_assets.keys import KeyError_, episode_key_from_filename, shot_index, shot_key, validate_key


@pytest.mark.parametrize("name, key", [
    ("My Show - 01 [1080p].mkv", "my_show_-_01_1080p"),
    ("ep01.mp4", "ep01"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\evil.mp4", "evil"),
    ("Café Épisode 2.webm", "cafe_episode_2"),
    ("$(rm -rf ~);ep.mp4", "rm_-rf_ep"),
])
def test_episode_keys_are_sanitised(name, key):
    assert episode_key_from_filename(name) == key


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "A", "ep'01", "ep 01", "-x", "a" * 65, "ep;rm", "x|y"])
def test_unsafe_keys_are_refused(bad):
    with pytest.raises(KeyError_):
        validate_key(bad)


def test_unusable_file_name_is_refused_with_its_name():
    with pytest.raises(KeyError_, match="pass --episode"):
        episode_key_from_filename("....mp4")


def test_shot_keys_round_trip_and_sort_in_time_order():
    keys = [shot_key(i) for i in (0, 9, 10, 399)]
    assert keys == sorted(keys) == ["s0000", "s0009", "s0010", "s0399"]
    assert [shot_index(k) for k in keys] == [0, 9, 10, 399]
    with pytest.raises(KeyError_):
        shot_index("s12")


def test_names_that_sanitise_alike_keep_distinct_keys():
    """Issue 10: non-ASCII-only names had no key, and names equal in their first 64 characters shared one."""
    long_a, long_b = "a" * 70 + " 01.mkv", "a" * 70 + " 02.mkv"
    keys = [episode_key_from_filename(n) for n in ("第一話.mp4", "第二話.mp4", long_a, long_b)]
    assert len(set(keys)) == 4 and all(validate_key(k) for k in keys)
    assert keys[0].startswith("x-") and keys[2].startswith("a" * 55 + "-")
    assert episode_key_from_filename("第一話.mp4") == keys[0]  # stable
    assert episode_key_from_filename("Café Épisode 2.webm") == "cafe_episode_2"  # accents fold, no digest
