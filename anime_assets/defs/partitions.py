"""Partitions: episodes, and episode x shot.

Both dimensions are dynamic. Shot keys are positions (`s0000`, `s0001`, ...) shared by
all episodes, so the multi-partition space is episodes x max-shots; only the pairs an
episode really has are ever launched (sensor, CLI), and a pair that does not exist fails
at once naming how many shots the episode has. Dagster maps a shot partition to its
episode partition by the shared `episode` dimension, which gives the lineage for free.
"""


import dagster as dg

from anime_assets.keys import shot_key, validate_key

EPISODES = "episodes"
SHOTS = "shots"

episode_partitions = dg.DynamicPartitionsDefinition(name=EPISODES)
shot_partitions = dg.DynamicPartitionsDefinition(name=SHOTS)
episode_shot_partitions = dg.MultiPartitionsDefinition({"episode": episode_partitions, "shot": shot_partitions})


def multi_key(episode: str, shot: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"episode": validate_key(episode, "episode"), "shot": validate_key(shot, "shot")})


def split_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """'ep01|s0003' (or a MultiPartitionKey) -> ('ep01', 's0003'), validated."""
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
        return validate_key(dims["episode"], "episode"), validate_key(dims["shot"], "shot")
    episode, _, shot = str(key).partition("|")
    return validate_key(episode, "episode"), validate_key(shot, "shot")


def ensure_shot_keys(instance: dg.DagsterInstance, n_shots: int) -> list[str]:
    """Register s0000..s{n-1} (the shared shot dimension grows to the longest episode)."""
    wanted = [shot_key(i) for i in range(n_shots)]
    have = set(instance.get_dynamic_partitions(SHOTS))
    missing = [k for k in wanted if k not in have]
    if missing:
        instance.add_dynamic_partitions(SHOTS, missing)
    return wanted


def shot_range_tags(episode: str, n_shots: int) -> dict[str, str]:
    """Run tags that target every real shot of `episode` in ONE run (models load once per run).

    Multi-partition keys sort by episode then shot, so an episode's shots are one contiguous range.
    """
    if n_shots < 1:
        raise ValueError(f"episode {episode} has no shots")
    return {
        "dagster/asset_partition_range_start": str(multi_key(episode, shot_key(0))),
        "dagster/asset_partition_range_end": str(multi_key(episode, shot_key(n_shots - 1))),
    }
