"""Spec loading and planning: the Go format, our params, warnings and bad_spec (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asset_generator.pipeline.plan import compose_prompt, default_filename, make_plan
from asset_generator.pipeline.spec import SpecError, parse_spec

TAROT = """\
assets:
  - name: Major Arcana
    output_dir: major-arcana
    seed_offset: 0
    metadata:
      style: "art nouveau style"
      type: "tarot card art"
    assets:
      - id: "00"
        name: The Fool
        prompt: "young traveler at cliff edge"
        filename: "00-the_fool.png"
      - id: 01
        name: The Magician
        prompt: "figure with infinity symbol"
  - name: Minor Arcana
    output_dir: minor-arcana
    seed_offset: 100
    metadata:
      style: "art nouveau style, minor"
      size: 3
    subgroups:
      - name: Wands
        output_dir: wands
        seed_offset: 10
        metadata:
          suit_element: fire
          state: on
        assets:
          - id: Ace of Wands!
            name: Ace of Wands
            prompt: "single upright wand"
            metadata:
              type: "override"
"""


def plan_of(text: str, base_seed: int = 1000, **options):
    return make_plan(parse_spec(text, "spec.yaml"), output_dir=Path("out"), base_seed=base_seed,
                     **options)  # fmt: skip


def test_go_format_prompts_seeds_and_paths() -> None:
    plan = plan_of(TAROT)
    fool, magician, ace = plan.assets
    assert fool.prompt == "young traveler at cliff edge, art nouveau style, tarot card art"
    assert fool.path == Path("out/major-arcana/00-the_fool.png")
    # An unquoted 01 is the id as written (the Go tool reads it into a string).
    assert magician.id == "01"
    assert magician.path == Path("out/major-arcana/01.png")
    assert (fool.seed, magician.seed) == (1000, 1001)
    # The subgroup's own offset only, not its parent's (as the Go code does).
    assert ace.seed == 1010
    assert ace.group == "Minor Arcana / Wands"
    assert ace.path == Path("out/minor-arcana/wands/ace_of_wands.png")
    # Document order, parent keys first, child values win in place; numbers are left out;
    # `on` stays text as in YAML 1.2.
    assert ace.prompt == "single upright wand, art nouveau style, minor, fire, on, override"


def test_style_prefix_and_suffix() -> None:
    assert compose_prompt("cat", {"a": "x", "b": ""}, "pre", "post") == "pre, cat, x, post"
    assert default_filename("Hero 01 (Final)") == "hero_01_final.png"


def test_params_inherit_and_the_nearest_wins() -> None:
    text = """\
params: {steps: 4, cfg_scale: 5, model: base}
assets:
  - name: g
    params: {width: 640, steps: 6}
    assets:
      - {id: a, prompt: p, params: {cfg_scale: 7.5, loras: ["pixel:0.5"]}}
      - {id: b, prompt: p}
"""
    from asset_generator.swarm.params import build_request

    # The config's [generate] values stay below the spec's.
    plan = plan_of(text, defaults=[("steps", 30), ("height", 512)])
    a, b = plan.assets
    # What SwarmUI is sent for each asset.
    assert build_request(a.request) == {
        "seed": 1000, "prompt": "p", "steps": 6, "cfgscale": 7.5, "model": "base",
        "height": 512, "width": 640, "loras": ["pixel"], "loraweights": ["0.5"], "images": 1,
    }  # fmt: skip
    assert b.request.cfg_scale == 5 and b.request.steps == 6
    assert b.request.loras == ()


def test_the_command_line_wins_over_the_spec_with_one_warning() -> None:
    text = """\
params: {steps: 4, cfg_scale: 5}
assets:
  - name: g
    params: {steps: 6}
    assets:
      - {id: a, prompt: p, params: {cfg_scale: 7.5, loras: ["pixel:0.5"], sampler: dpm}}
      - {id: b, prompt: p}
      - {id: c, prompt: p, params: {steps: 20, cfg_scale: 7.5}}
"""
    plan = plan_of(
        text,
        defaults=[("steps", 30), ("height", 512)],
        overrides=[("steps", 20), ("cfg_scale", 7.5), ("loras", ["detail"]), ("width", 640)],
    )
    a, b, c = plan.assets
    # As helm --set wins over a values file: every asset gets the command line's values.
    assert a.request.steps == b.request.steps == c.request.steps == 20
    assert a.request.cfg_scale == b.request.cfg_scale == 7.5
    assert [str(lora) for lora in b.request.loras] == ["detail:1"]
    assert a.request.width == 640 and a.request.sampler == "dpm" and a.request.height == 512
    # One line for the whole plan, counting the assets whose spec value was replaced by a
    # different one (c already had these values), naming the options as typed.
    (warning,) = [w for w in plan.warnings if "command line" in w]
    assert warning == (
        "warning: the command line (--steps, --cfg-scale, --lora) overrides the spec's "
        "params for 2 of 3 assets"
    )
    assert not [w for w in plan_of(text, overrides=[("width", 64)]).warnings if "command" in w]


def test_unknown_keys_are_warned_with_line_and_place() -> None:
    text = (
        "assets:\n  - name: g\n    assets:\n      - id: a\n        prompt: p\n        colour: red\n"
    )
    plan = plan_of(text)
    assert len(plan.warnings) == 1
    assert "line 6" in plan.warnings[0] and "assets[0].assets[0].colour" in plan.warnings[0]


def test_shared_seeds_are_warned() -> None:
    text = """\
assets:
  - {name: a, assets: [{id: x, prompt: p}, {id: y, prompt: p}]}
  - {name: b, seed_offset: 1, assets: [{id: z, prompt: p}]}
"""
    plan = plan_of(text)
    assert any("seed 1001 is shared by y, z" in w for w in plan.warnings)


def test_filename_template_fields() -> None:
    text = (
        "assets:\n  - name: g\n    assets:\n"
        "      - {id: Hero, prompt: p, filename: '{id}-{seed}.png'}\n"
    )
    assert plan_of(text).assets[0].path == Path("out/Hero-1000.png")


BAD = {
    "yaml error": ("assets:\n  - name: [unclosed\n", "line 3"),
    "no assets": ("groups: []\n", "no top-level assets"),
    "empty": ("", "empty"),
    "not a mapping": ("- a\n- b\n", "mapping"),
    "assets not a list": ("assets: hello\n", "expected a list"),
    "seed_offset text": ("assets:\n  - {name: g, seed_offset: ten, assets: [{id: a, prompt: p}]}\n",
                         "whole number"),
    "steps text": ("assets:\n  - {name: g, params: {steps: many}, assets: [{id: a, prompt: p}]}\n",
                   "whole number"),
    "no id": ("assets:\n  - {name: g, assets: [{prompt: p}]}\n", "needs an id"),
    "dotdot dir": ("assets:\n  - {name: g, output_dir: ../up, assets: [{id: a, prompt: p}]}\n",
                   "leaves --output-dir"),
    "absolute file": ("assets:\n  - {name: g, assets: [{id: a, prompt: p, filename: /etc/x}]}\n",
                      "absolute"),
    "same path": ("assets:\n  - {name: g, assets: [{id: a, prompt: p}, {id: A, prompt: q}]}\n",
                  "both write"),
    "no assets at all": ("assets:\n  - {name: g}\n", "no assets"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_specs(case: str) -> None:
    text, expected = BAD[case]
    with pytest.raises(SpecError) as caught:
        plan_of(text)
    assert expected in str(caught.value)
    assert str(caught.value).startswith("spec.yaml")


def test_go_example_files_load_unchanged(tmp_path: Path) -> None:
    # The same shapes as the Go tool's examples (generic-pipeline.yaml): every key it knows.
    text = """\
assets:
  - name: Hero Characters
    output_dir: characters/heroes
    seed_offset: 0
    metadata:
      style: "fantasy RPG character art"
    assets:
      - id: warrior_001
        name: Knight Warrior
        prompt: "armored knight"
        filename: knight.png
  - name: Backgrounds
    output_dir: backgrounds
    seed_offset: 200
    subgroups:
      - name: Dungeons
        output_dir: dungeons
        seed_offset: 0
        metadata:
          lighting: "dark and moody"
        assets:
          - id: dungeon_entrance
            name: Dungeon Entrance
            prompt: "stone archway"
"""
    # Base seed 0 is a seed like any other (the Go tool turns it into a random one).
    plan = plan_of(text, base_seed=0)
    assert [a.seed for a in plan.assets] == [0, 0]
    assert [w for w in plan.warnings if "unknown key" in w] == []
    assert any("seed 0 is shared" in w for w in plan.warnings)
    assert plan.assets[1].path == Path("out/backgrounds/dungeons/dungeon_entrance.png")


def test_a_registry_written_before_pipelines_still_loads() -> None:
    from asset_generator.registry import State

    old = {
        "schema": 1,
        "generations": {
            "gen_00000001": {
                "id": "gen_00000001", "server": "http://x", "server_key": "k", "session_id": "s",
                "pid": 1, "host": "h", "prompt": "p", "created": 1.0, "status": "succeeded",
            }
        },
        "servers": {},
    }  # fmt: skip
    state = State.from_json(old)
    assert state.pipelines == {}
    assert state.generations["gen_00000001"].pipeline_id is None
    assert State.from_json(state.to_json()).to_json() == state.to_json()


def test_the_manifest_rewrites_only_what_changed_and_reads_back_true(tmp_path: Path) -> None:
    import hashlib
    import json

    from asset_generator.pipeline.manifest import Manifest

    spec = parse_spec("assets:\n  - {name: g, assets: [{id: a, prompt: p}, {id: b, prompt: q}]}\n",
                      "s.yaml")  # fmt: skip
    plan = make_plan(spec, output_dir=tmp_path, base_seed=3)
    first, second = plan.assets
    manifest = Manifest.load(tmp_path)
    first.path.write_bytes(b"one")
    manifest.record(first, "succeeded", generation_id="gen_1")
    manifest.record(second, "failed", error="boom")
    manifest.save()
    # Each entry's text is cached; a later record of the same asset must replace it.
    first.path.write_bytes(b"two")
    manifest.record(first, "succeeded", generation_id="gen_2")
    manifest.record(second, "failed", error="boom again")
    manifest.save()
    document = json.loads(manifest.path.read_text())
    assert document["base_seed"] is None and document["version"] == 2
    entries = document["assets"]
    assert entries["a.png"]["generation_id"] == "gen_2"
    assert entries["b.png"]["error"] == "boom again" and entries["b.png"]["status"] == "failed"
    again = Manifest.load(tmp_path)
    assert again.problem is None
    assert again.entries["a.png"].sha256 == hashlib.sha256(b"two").hexdigest()


def test_a_duplicate_id_names_both_lines_and_messages_end_on_a_word() -> None:
    text = (
        "assets:\n"
        "  - name: Characters\n"
        "    assets:\n"
        "      - {id: hero, prompt: a knight}\n"
        "      - {id: mage, prompt: a mage}\n"
        "      - {id: hero, prompt: a knight again, filename: hero2.png}\n"
    )
    with pytest.raises(SpecError) as caught:
        plan_of(text)
    message = str(caught.value)
    assert message == (
        "spec.yaml line 6: asset id 'hero' is used twice in group 'Characters' (assets[0]), "
        "on lines 4 and 6; give each asset of a group its own id"
    )
    # The same id in two groups is two assets (the group tells them apart), as in the Go tool.
    plan = plan_of(
        "assets:\n"
        "  - {name: a, output_dir: a, assets: [{id: icon, prompt: p}]}\n"
        "  - {name: b, output_dir: b, assets: [{id: icon, prompt: q}]}\n"
    )
    assert [a.relative_path for a in plan.assets] == ["a/icon.png", "b/icon.png"]
    with pytest.raises(SpecError) as same_path:
        plan_of(BAD["same path"][0])
    assert str(same_path.value).endswith("set a different filename for one of them")
    for case in BAD:
        with pytest.raises(SpecError) as bad:
            plan_of(BAD[case][0])
        assert not str(bad.value).rstrip().endswith(":"), case


def test_the_manifest_says_why_an_asset_is_made_again(tmp_path: Path) -> None:
    from asset_generator.pipeline.manifest import Manifest

    text = "assets:\n  - {name: g, assets: [{id: a, prompt: p}, {id: b, prompt: q}]}\n"
    made = make_plan(parse_spec(text, "s.yaml"), output_dir=tmp_path, base_seed=3)
    manifest = Manifest.load(tmp_path)
    for asset in made.assets:
        asset.path.write_bytes(asset.id.encode())
        manifest.record(asset, "succeeded")

    def why(plan, *, force: bool = False, overwrite: bool = False) -> list[tuple]:
        return [
            (d.verdict, d.reasons, d.changed)
            for d in (manifest.decide(a, force=force, overwrite=overwrite) for a in plan.assets)
        ]

    assert why(made) == [("skip", (), ()), ("skip", (), ())]
    assert why(made, force=True) == [("generate", ("force",), ())] * 2
    reseeded = make_plan(parse_spec(text, "s.yaml"), output_dir=tmp_path, base_seed=4)
    assert why(reseeded) == [("generate", ("seed",), ())] * 2
    stepped = make_plan(parse_spec(text, "s.yaml"), output_dir=tmp_path, base_seed=3,
                        overrides=[("steps", 9), ("width", 64)])  # fmt: skip
    assert why(stepped)[0] == ("generate", ("params",), ("width", "steps"))
    manifest.postprocess = {"strip_metadata": True}
    assert why(made)[0] == ("generate", ("postprocess",), ())
    manifest.postprocess = None
    manifest.entries.clear()
    manifest.record(made.assets[0], "succeeded")
    manifest.record(made.assets[1], "failed", error="boom", kept_file=True)
    assert why(made)[1] == ("generate", ("unfinished",), ())
    made.assets[0].path.write_bytes(b"edited")
    assert why(made)[0] == ("blocked", ("altered",), ())
    assert why(made, overwrite=True)[0] == ("generate", ("altered",), ())
    more = make_plan(
        parse_spec(text.replace("}]}", "}, {id: c, prompt: r}]}"), "s.yaml"),
        output_dir=tmp_path, base_seed=3,
    )  # fmt: skip
    assert why(more)[2] == ("generate", ("new",), ())
    made.assets[0].path.unlink()
    assert why(made)[0] == ("generate", ("missing",), ())
