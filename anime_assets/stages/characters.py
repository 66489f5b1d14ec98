"""One episode's character instances -> outfits and characters of the persistent registry.

1. Every character instance of the episode's kept frames (the layers' instances, fragments under
   0.5% of the frame left out) gets a `look` (whole instance) and, when a face lies in its upper
   part, a `face` descriptor (head: hair, eyes, skin) - see vision/identity.py.
2. The episode's instances are clustered by look: each cluster is one outfit as seen here.
3. Each cluster is matched to the registry's outfits (look AND, where both have one, face); an
   unmatched cluster becomes a new outfit. Its character: the matched outfit's (so merges and
   splits people made hold), else the registry character whose identity (face) is closest, else
   the character of another cluster of this episode with the same face, else a new character.
4. The episode's instance rows are replaced; then the references of every outfit and character
   are recomputed from all instance rows, so re-running an episode changes nothing.

Names, merges and splits (`anime-assets characters ...`) live in the registry rows, which this
never rewrites. Thresholds were measured on the fixture episodes: one character in two outfits
has head descriptors within 0.042 of each other across outfits, while recolouring her hair
and eyes by 20 degrees of hue moves them 0.185 away.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import cv2
import numpy as np

from anime_assets import PIPELINE_VERSION
from anime_assets.stages.captions import MIN_CHARACTER_AREA
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaStore
from anime_assets.storage.registry import RegistryStore
from anime_assets.vision.identity import DIM, cluster, face_in_box, instance_descriptors, mean_unit

DESCRIPTOR = "hsv-18x3x3-v1"
LOOK_MAX = 0.2  # cosine distance: instances of one outfit (average linkage) / a cluster to an outfit
FACE_MAX = 0.1  # cosine distance between head descriptors of one character
FACELESS_LOOK_MAX = 0.4  # a cluster with no face joins the nearest outfit this close
ASSET = "character_registry"  # media folder of the sample crops


def registry(db_uri: str) -> RegistryStore:
    return RegistryStore(db_uri, DIM)


def episode_observations(layers_rows: list[dict], faces_rows: list[dict]) -> list[dict]:
    """Instance rows (without registry ids yet) with their look and face descriptors."""
    faces = {r[fs.ID]: [(f["x0"], f["y0"], f["x1"], f["y1"]) for f in r[fs.FACES]] for r in faces_rows}
    out = []
    for r in sorted(layers_rows, key=lambda r: r[fs.ID]):
        inst = [i for i in r[fs.INSTANCES] or [] if i["area"] >= MIN_CHARACTER_AREA]
        if not inst:
            continue
        layer = cv2.imread(str(MediaStore.path_from_uri(r[fs.CHARACTER_URI])), cv2.IMREAD_UNCHANGED)
        ids = cv2.imread(str(MediaStore.path_from_uri(r[fs.INSTANCE_MASK_URI])), cv2.IMREAD_UNCHANGED)
        if layer is None or ids is None:
            raise FileNotFoundError(f"{r[fs.ID]}: character layer or instance mask is missing")
        rgb, alpha = cv2.cvtColor(layer[..., :3], cv2.COLOR_BGR2RGB), layer[..., 3] >= 128
        for i in inst:
            box = (i["x0"], i["y0"], i["x1"], i["y1"])
            look, face = instance_descriptors(rgb, alpha & (ids == i["id"]), face_in_box(faces.get(r[fs.ID], []), box))
            if look is None:
                continue
            out.append({
                fs.ID: fs.pose_id(r[fs.ID], i["id"]), fs.EPISODE: r[fs.EPISODE], fs.SHOT: r[fs.SHOT],
                fs.FRAME_INDEX: r[fs.FRAME_INDEX], fs.FRAME_ID: r[fs.ID], fs.INSTANCE_ID: i["id"],
                fs.BOX: list(box), "area": i["area"], fs.LOOK: look, fs.FACE_VECTOR: face,
                fs.DESCRIPTOR: DESCRIPTOR, fs.PIPELINE_VERSION: PIPELINE_VERSION,
                "_character_uri": r[fs.CHARACTER_URI],
            })
    return out


def _cos_d(a, b) -> float:
    return 1.0 - float(np.dot(a, b))


def _next_id(prefix: str, taken) -> str:
    n = max([int(t[1:]) for t in taken] + [0]) + 1
    return f"{prefix}{n:04d}"


def resolve(char_id: str, characters: dict[str, dict]) -> str:
    """Follow merges to the character an id is now."""
    seen = set()
    while characters.get(char_id, {}).get(fs.MERGED_INTO) and char_id not in seen:
        seen.add(char_id)
        char_id = characters[char_id][fs.MERGED_INTO]
    return char_id


def assign_episode(reg: RegistryStore, store: MediaStore, episode: str, obs: list[dict]) -> dict:
    """Match the episode's instances to the registry and write them; returns a summary."""
    with reg.lock():
        characters = {c[fs.CHARACTER_ID]: c for c in reg.read_characters()}
        outfits = {o[fs.OUTFIT_ID]: o for o in reg.read_outfits()}
        looks = np.array([o[fs.LOOK] for o in obs], np.float32).reshape(-1, DIM)
        labels = cluster(looks, LOOK_MAX)
        clusters = []
        for k in range(int(labels.max()) + 1 if len(labels) else 0):
            members = [o for o, lab in zip(obs, labels) if lab == k]
            clusters.append({"members": members, "look": mean_unit([m[fs.LOOK] for m in members]),
                             "face": mean_unit([m[fs.FACE_VECTOR] for m in members])})
        new_outfits, new_characters = [], []
        for c in clusters:  # 3a. registry outfit by look (and face when both have one)
            # Without a face to tell, a partial view (a fragment, a back) joins the nearest known
            # outfit more loosely rather than inventing a character.
            best, best_d = None, LOOK_MAX if c["face"] is not None else FACELESS_LOOK_MAX
            for oid, o in outfits.items():
                d = _cos_d(c["look"], o[fs.LOOK])
                face_ok = c["face"] is None or o[fs.IDENTITY] is None or _cos_d(c["face"], o[fs.IDENTITY]) <= FACE_MAX
                if d <= best_d and face_ok:
                    best, best_d = oid, d
            c["outfit"] = best
            c["character"] = resolve(outfits[best][fs.CHARACTER_ID], characters) if best else None
        for c in clusters:  # 3b. registry character by identity
            if c["character"] is None and c["face"] is not None:
                best, best_d = None, FACE_MAX
                for cid, ch in characters.items():
                    if ch[fs.MERGED_INTO] or ch[fs.IDENTITY] is None:
                        continue
                    d = _cos_d(c["face"], ch[fs.IDENTITY])
                    if d <= best_d:
                        best, best_d = cid, d
                c["character"] = best
        # 3c. clusters with a face first (another cluster of this episode with the same face, else
        # new), then faceless ones (a partial view - fragment, back - joins the nearest outfit seen
        # here with a face), so the order of clusters does not matter.
        for c in sorted(clusters, key=lambda c: c["face"] is None):
            if c["character"] is None and c["face"] is not None:
                same = [o for o in clusters if o is not c and o["character"] and o["face"] is not None
                        and _cos_d(c["face"], o["face"]) <= FACE_MAX]
                if same:
                    c["character"] = same[0]["character"]
            if c["character"] is None and c["face"] is None:
                near = [(_cos_d(c["look"], o["look"]), n, o) for n, o in enumerate(clusters)
                        if o["face"] is not None and o["outfit"]]
                near = [t for t in near if t[0] <= FACELESS_LOOK_MAX]
                if near:
                    other = min(near)[2]
                    c["character"], c["outfit"] = other["character"], other["outfit"]
            if c["character"] is None:
                c["character"] = _next_id("c", [*characters, *new_characters])
                new_characters.append(c["character"])
                characters[c["character"]] = {fs.CHARACTER_ID: c["character"], fs.NAME: None, fs.MERGED_INTO: None,
                                              fs.IDENTITY: c["face"], fs.N_INSTANCES: 0, fs.EPISODES: [],
                                              fs.SAMPLE_URI: None, fs.DESCRIPTOR: DESCRIPTOR}
            if c["outfit"] is None:
                c["outfit"] = _next_id("o", [*outfits, *new_outfits])
                new_outfits.append(c["outfit"])
                outfits[c["outfit"]] = {fs.OUTFIT_ID: c["outfit"], fs.CHARACTER_ID: c["character"], fs.LOOK: c["look"],
                                        fs.IDENTITY: c["face"], fs.N_INSTANCES: 0, fs.EPISODES: [],
                                        fs.SAMPLE_URI: None, fs.DESCRIPTOR: DESCRIPTOR}
        rows = []
        for c in clusters:
            for m in c["members"]:
                rows.append({**{k: v for k, v in m.items() if not k.startswith("_")},
                             fs.CHARACTER_ID: c["character"], fs.OUTFIT_ID: c["outfit"]})
        reg.replace_episode_instances(episode, rows)
        samples = {m[fs.ID]: m["_character_uri"] for c in clusters for m in c["members"]}
        refresh(reg, store, characters, outfits, samples)
    return {"instances": len(rows), "outfit_clusters": len(clusters), "new_outfits": new_outfits,
            "new_characters": new_characters,
            "characters": dict(Counter(resolve(r[fs.CHARACTER_ID], characters) for r in rows))}


def refresh(reg: RegistryStore, store: MediaStore, characters: dict[str, dict], outfits: dict[str, dict],
            sample_layers: dict[str, str] | None = None) -> None:
    """Recompute every outfit's and character's references, counts and episodes from all
    instance rows (names, merges and outfit owners are kept as they are)."""
    rows = reg.read_instances()
    by_outfit, by_char = defaultdict(list), defaultdict(list)
    for r in rows:
        by_outfit[r[fs.OUTFIT_ID]].append(r)
        by_char[resolve(r[fs.CHARACTER_ID], characters)].append(r)
    for oid, o in outfits.items():
        members = by_outfit.get(oid, [])
        if members:
            o[fs.LOOK] = mean_unit([np.asarray(m[fs.LOOK], np.float32) for m in members])
            face = mean_unit([np.asarray(m[fs.FACE_VECTOR], np.float32) for m in members if m[fs.FACE_VECTOR]])
            o[fs.IDENTITY] = face if face is not None else o[fs.IDENTITY]
        o[fs.N_INSTANCES] = len(members)
        o[fs.EPISODES] = sorted({m[fs.EPISODE] for m in members})
        o[fs.SAMPLE_URI] = _sample(store, oid, members, sample_layers) or o[fs.SAMPLE_URI]
    for cid, ch in characters.items():
        members = [] if ch[fs.MERGED_INTO] else by_char.get(cid, [])
        if members:
            face = mean_unit([np.asarray(m[fs.FACE_VECTOR], np.float32) for m in members if m[fs.FACE_VECTOR]])
            ch[fs.IDENTITY] = face if face is not None else ch[fs.IDENTITY]
        ch[fs.N_INSTANCES] = len(members)
        ch[fs.EPISODES] = sorted({m[fs.EPISODE] for m in members})
        ch[fs.SAMPLE_URI] = _sample(store, cid, members, sample_layers) or ch[fs.SAMPLE_URI]
    reg.upsert_outfits([_plain(o) for o in outfits.values()])
    reg.upsert_characters([_plain(c) for c in characters.values()])


def _plain(row: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items() if k != fs.UPDATED_AT}


def _sample(store: MediaStore, key: str, members: list[dict], layers: dict[str, str] | None) -> str | None:
    """A crop of the member with the largest area whose character layer is at hand (RGBA PNG)."""
    if not layers:
        return None
    known = [m for m in members if layers.get(m[fs.ID])]
    if not known:
        return None
    best = max(known, key=lambda m: (m["area"], m[fs.ID]))
    layer = cv2.imread(str(MediaStore.path_from_uri(layers[best[fs.ID]])), cv2.IMREAD_UNCHANGED)
    if layer is None:
        return None
    x0, y0, x1, y1 = best[fs.BOX]
    ok, png = cv2.imencode(".png", layer[y0:y1, x0:x1])
    if not ok:
        return None
    return MediaStore.uri(store.write_bytes(ASSET, "samples", None, f"{key}.png", png.tobytes()))


# ------------------------------------------------------------------------ edits by people
class RegistryEditError(ValueError):
    """An edit that cannot be made (unknown id, name taken, ...): one line saying why."""


def _load(reg: RegistryStore):
    return {c[fs.CHARACTER_ID]: c for c in reg.read_characters()}, {o[fs.OUTFIT_ID]: o for o in reg.read_outfits()}


def _known(characters: dict, cid: str) -> str:
    if cid not in characters:
        raise RegistryEditError(f"no character {cid!r}; `anime-assets characters list` shows the ids")
    return resolve(cid, characters)


def find_character(characters: dict[str, dict], key: str) -> str:
    """A character id from an id or a name (case-insensitive), followed through merges."""
    if key in characters:
        return resolve(key, characters)
    named = [cid for cid, c in characters.items() if (c[fs.NAME] or "").lower() == key.strip().lower()]
    if not named:
        raise RegistryEditError(f"no character with id or name {key!r}")
    return resolve(named[0], characters)


def name_character(reg: RegistryStore, key: str, name: str) -> str:
    name = " ".join(str(name).split())
    if not name or len(name) > 64:
        raise RegistryEditError("a name is 1 to 64 characters")
    with reg.lock():
        characters, _ = _load(reg)
        cid = find_character(characters, key)
        for other, c in characters.items():
            if other != cid and not c[fs.MERGED_INTO] and (c[fs.NAME] or "").lower() == name.lower():
                raise RegistryEditError(f"{other} is already named {name!r}; merge the two instead")
        characters[cid][fs.NAME] = name
        reg.upsert_characters([_plain(characters[cid])])
    return cid


def merge_characters(reg: RegistryStore, store: MediaStore, source: str, target: str) -> str:
    """`source` becomes `target`: its outfits and instances move; its id keeps pointing there."""
    with reg.lock():
        characters, outfits = _load(reg)
        src, dst = find_character(characters, source), find_character(characters, target)
        if src == dst:
            raise RegistryEditError(f"{source} and {target} are already one character ({dst})")
        characters[src][fs.MERGED_INTO] = dst
        if not characters[dst][fs.NAME]:
            characters[dst][fs.NAME] = characters[src][fs.NAME]
        characters[src][fs.NAME] = None
        for o in outfits.values():
            if resolve(o[fs.CHARACTER_ID], characters) == dst:
                o[fs.CHARACTER_ID] = dst
        reg.reassign(fs.CHARACTER_ID, src, dst)
        refresh(reg, store, characters, outfits)
    return dst


def split_outfit(reg: RegistryStore, store: MediaStore, key: str, outfit: str) -> str:
    """Outfit `outfit` of character `key` is somebody else: a new character gets it."""
    with reg.lock():
        characters, outfits = _load(reg)
        cid = find_character(characters, key)
        if outfit not in outfits or resolve(outfits[outfit][fs.CHARACTER_ID], characters) != cid:
            raise RegistryEditError(f"{outfit!r} is not an outfit of {cid}")
        mine = [o for o in outfits.values() if resolve(o[fs.CHARACTER_ID], characters) == cid]
        if len(mine) < 2:
            raise RegistryEditError(f"{cid} has one outfit only; nothing to split")
        new = _next_id("c", characters)
        characters[new] = {fs.CHARACTER_ID: new, fs.NAME: None, fs.MERGED_INTO: None,
                           fs.IDENTITY: outfits[outfit][fs.IDENTITY], fs.N_INSTANCES: 0, fs.EPISODES: [],
                           fs.SAMPLE_URI: outfits[outfit][fs.SAMPLE_URI], fs.DESCRIPTOR: DESCRIPTOR}
        outfits[outfit][fs.CHARACTER_ID] = new
        reg.reassign(fs.CHARACTER_ID, cid, new, where=f"{fs.OUTFIT_ID} = '{outfit}'")
        refresh(reg, store, characters, outfits)
    return new


def listing(reg: RegistryStore) -> list[dict]:
    """Live characters (not merged away) with their outfits, most seen first."""
    characters, outfits = _load(reg)
    out = []
    for cid, c in characters.items():
        if c[fs.MERGED_INTO]:
            continue
        mine = sorted(o[fs.OUTFIT_ID] for o in outfits.values() if resolve(o[fs.CHARACTER_ID], characters) == cid)
        # A character never seen with a face is a candidate: often a piece of scenery the layers
        # took for a character (a person decides with `merge` or ignores it).
        out.append({"id": cid, "name": c[fs.NAME], "instances": c[fs.N_INSTANCES], "episodes": c[fs.EPISODES],
                    "outfits": mine, "sample": c[fs.SAMPLE_URI], "face_seen": c[fs.IDENTITY] is not None})
    return sorted(out, key=lambda r: (-r["instances"], r["id"]))
