"""LoRAs in the lane engine, on every tiny family: each lane equals the family's diffusers pipeline
after `load_lora_weights` and `set_adapters` with the same weight, alone and beside plain lanes and
lanes of another LoRA; both file formats load; switching never reloads nor touches base weights;
a LoRA that doesn't fit (or a broken file) is reported by name and the rest serve."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from inference.model_info import UnknownLora
from inference.models.adapters import Adapters, adapter_key
from inference.models.loading import LoadedModel, load_model
from inference.registry import LoraSpec, ModelSpec
from inference.requests import CompareStepsRequest, GenerateRequest, InvalidRequest, PlainRow, row_requests
from inference.schedulers import make_scheduler
from inference.validation import validate, validate_for_model
from tests.a1111 import parse_generation_parameters
from tests.inference.lanes import RecordingEngine, relative_error, run_alone
from tests.inference.loras import TinyLora, cut_off, make_lora

TOLERANCE = 1e-4  # relative error, float32 on CPU
SIZE = 64
# model -> a scheduler and guidance its plain pipeline runs (FLUX schnell: guidance ignored)
SETTINGS = {"tiny": ("Euler", 5.0), "tiny-sdxl": ("Euler", 5.0), "tiny-flux": ("Euler", 0.0)}
FAMILIES = list(SETTINGS)


@dataclass
class Served:
    model: LoadedModel
    loras: dict[str, TinyLora]
    cache: Path


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Callable[[str], dict[str, TinyLora]]:
    made: dict[str, dict[str, TinyLora]] = {}

    def files(model: str) -> dict[str, TinyLora]:
        if model not in made:
            folder = tmp_path_factory.mktemp(f"loras-{model}")
            made[model] = {name: make_lora(model, folder, name, seed=seed, cache_dir=model_cache_dir)
                           for name, seed in (("style", 1), ("detail", 2))}  # fmt: skip
        return made[model]

    return files


def serve(model: str, specs: tuple[LoraSpec, ...], cache: Path) -> LoadedModel:
    return load_model(ModelSpec(name=model, source=model, loras=specs), cache_dir=cache)


@pytest.fixture(scope="module", params=FAMILIES)
def served(request: pytest.FixtureRequest, lora_files: Callable[[str], dict[str, TinyLora]],
           model_cache_dir: Path) -> Served:  # fmt: skip
    model = request.param
    files = lora_files(model)
    specs = (
        LoraSpec("style", str(files["style"].diffusers), weight=0.8),
        LoraSpec("style-kohya", str(files["style"].kohya)),
        LoraSpec("detail", str(files["detail"].kohya)),
    )
    return Served(serve(model, specs, model_cache_dir), files, model_cache_dir)


def request_for(served: Served, loras: tuple[tuple[str, float], ...], **extra: Any) -> GenerateRequest:
    scheduler, guidance = SETTINGS[served.model.name]
    fields: dict[str, Any] = {"steps": 4, "scheduler": scheduler, "seed": 77, "guidance": guidance,
                              "width": SIZE, "height": SIZE, "loras": loras, **extra}  # fmt: skip
    return GenerateRequest("a red fox", **fields)


def diffusers_reference(served: Served, request: GenerateRequest, files: dict[str, Path]) -> torch.Tensor:
    """The family's own pipeline, freshly loaded, after load_lora_weights and set_adapters."""
    fresh = load_model(served.model.name, cache_dir=served.cache)
    pipe = fresh.pipe
    for name, path in files.items():
        pipe.load_lora_weights(str(path), adapter_name=name)
    if request.loras:
        pipe.set_adapters([name for name, _ in request.loras], [weight for _, weight in request.loras])
    flow = fresh.info.family == "flux"
    call: dict[str, Any] = {"max_sequence_length": fresh.family.max_sequence_length} if flow else {}  # type: ignore[attr-defined]
    pipe.scheduler = make_scheduler(pipe.scheduler.config, request.scheduler, request.seed, flow=flow)
    latents: torch.Tensor = pipe(
        request.prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        height=request.height,
        width=request.width,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent",
        **call,
    ).images
    return latents


def base_weights_hash(model: LoadedModel) -> str:
    """SHA-256 of every base weight of the denoiser and text encoders (LoRA layers left out)."""
    digest = hashlib.sha256()
    for component in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        module = getattr(model.pipe, component, None)
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            if "lora_" not in name:
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def test_a_lora_lane_equals_the_pipeline_after_load_lora_weights_and_set_adapters(served: Served) -> None:
    request = request_for(served, (("style", 0.7),))
    ours = run_alone(served.model, request)
    theirs = diffusers_reference(served, request, {"style": served.loras["style"].diffusers})
    assert relative_error(ours, theirs) <= TOLERANCE
    plain = run_alone(served.model, request_for(served, ()))
    assert relative_error(ours, plain) > 10 * TOLERANCE, "the LoRA must change the image for this test to mean anything"


def test_the_kohya_file_and_the_diffusers_file_of_one_lora_give_the_same_image(served: Served) -> None:
    diffusers = run_alone(served.model, request_for(served, (("style", 0.9),)))
    kohya = run_alone(served.model, request_for(served, (("style-kohya", 0.9),)))
    assert relative_error(kohya, diffusers) <= TOLERANCE


def test_lanes_of_two_loras_and_plain_lanes_in_one_run_each_equal_the_pipeline(served: Served) -> None:
    """Plain lanes, lanes of one LoRA, of another and of both stacked take turns in one engine run:
    every lane equals the diffusers pipeline with its own adapters; no LoRA is loaded again and the
    base weights are bit-identical afterwards."""
    model, adapters = served.model, served.model.adapters
    assert adapters is not None
    before, loads = base_weights_hash(model), adapters.loads
    jobs = {
        "plain": request_for(served, ()),
        "style": request_for(served, (("style", 0.7),)),
        "detail": request_for(served, (("detail", 1.3),), seed=5),
        "both": request_for(served, (("style", 0.5), ("detail", 0.6)), seed=9),
        "plain-grid": CompareStepsRequest("a boat", steps=(2, 3), scheduler=SETTINGS[model.name][0], seed=3,
                                          guidance=SETTINGS[model.name][1], width=SIZE, height=SIZE),
    }  # fmt: skip
    engine = RecordingEngine(model)
    for job_id, job in jobs.items():
        engine.add_job(job_id, job)
    engine.run_until_idle()
    files = {"style": served.loras["style"].diffusers, "detail": served.loras["detail"].kohya}
    for job_id in ("style", "detail", "both", "plain"):
        job = jobs[job_id]
        assert isinstance(job, GenerateRequest)
        theirs = diffusers_reference(served, job, {n: files[n] for n, _ in job.loras})
        assert relative_error(engine.final_latents[(job_id, 0)], theirs) <= TOLERANCE, job_id
    assert adapters.loads == loads, "switching sets must never load a LoRA again"
    assert base_weights_hash(model) == before


def test_the_image_parameters_carry_the_lora_tags_and_hashes(served: Served) -> None:
    engine = RecordingEngine(served.model)
    engine.add_job("job", request_for(served, (("style", 0.7), ("detail", 1.0))))
    engine.run_until_idle()
    parsed = parse_generation_parameters(Image.open(io.BytesIO(engine.result("job").images[0].png)).text["parameters"])
    assert parsed["Prompt"] == "a red fox <lora:style:0.7> <lora:detail:1>"
    adapters = served.model.adapters
    assert adapters is not None
    assert parsed["Lora hashes"] == f"style: {adapters.hashes['style']}, detail: {adapters.hashes['detail']}"
    style_file = served.loras["style"].diffusers.read_bytes()
    header = int.from_bytes(style_file[:8], "little")
    assert adapters.hashes["style"] == hashlib.sha256(style_file[8 + header :]).hexdigest()[:12]  # A1111's AutoV3


def test_the_model_reports_its_loras_with_their_defaults(served: Served) -> None:
    info = served.model.info
    assert [(lora.name, lora.default_weight, lora.few_step) for lora in info.loras] == [
        ("style", 0.8, False), ("style-kohya", 1.0, False), ("detail", 1.0, False)]  # fmt: skip
    assert info.unavailable_loras == ()


def test_an_unknown_lora_is_refused_with_the_names_it_is_close_to(served: Served) -> None:
    with pytest.raises(UnknownLora, match=r"Unknown LoRA 'stlye'.*close: style"):
        validate_for_model(request_for(served, (("stlye", 1.0),)), served.model.info)
    engine = RecordingEngine(served.model)
    with pytest.raises(InvalidRequest, match="Unknown LoRA"):
        engine.add_job("job", request_for(served, (("nope", 1.0),)))


def test_a_lora_of_another_family_a_broken_file_and_a_missing_one_are_reported_by_name_and_the_rest_serve(
    lora_files: Callable[[str], dict[str, TinyLora]], model_cache_dir: Path, tmp_path: Path
) -> None:
    sd, sdxl, flux = lora_files("tiny"), lora_files("tiny-sdxl"), lora_files("tiny-flux")
    specs = (
        LoraSpec("sd15-on-sdxl", str(sd["style"].kohya)),
        LoraSpec("flux-on-sdxl", str(flux["style"].diffusers)),
        LoraSpec("broken", str(cut_off(sdxl["style"].kohya, tmp_path / "broken.safetensors"))),
        LoraSpec("missing", str(tmp_path / "missing.safetensors")),
        LoraSpec("good", str(sdxl["style"].kohya)),
    )
    model = serve("tiny-sdxl", specs, model_cache_dir)
    failed = {item.name: item.message for item in model.info.unavailable_loras}
    assert [lora.name for lora in model.info.loras] == ["good"]
    assert set(failed) == {"sd15-on-sdxl", "flux-on-sdxl", "broken", "missing"}
    assert "another model family" in failed["sd15-on-sdxl"] and "another model family" in failed["flux-on-sdxl"]
    assert "can't be read" in failed["broken"] and "no such file" in failed["missing"]
    assert all("\n" not in message for message in failed.values())
    with pytest.raises(UnknownLora, match="didn't load on this worker"):
        model.info.lora("broken")
    request = GenerateRequest("a fox", steps=3, scheduler="Euler", guidance=5.0, width=SIZE, height=SIZE,
                              loras=(("good", 1.0),))  # fmt: skip
    run_alone(model, request)  # the LoRA that fits serves


def test_past_the_cap_the_least_recently_used_lora_is_unloaded_and_loaded_again_when_asked_for(
    lora_files: Callable[[str], dict[str, TinyLora]], model_cache_dir: Path
) -> None:
    files = lora_files("tiny")
    names = [f"l{i}" for i in range(6)]
    specs = tuple(LoraSpec(name, str(files["style" if i % 2 else "detail"].kohya)) for i, name in enumerate(names))
    model = serve("tiny", specs, model_cache_dir)
    adapters = model.adapters
    assert adapters is not None
    capped = Adapters(model.pipe, model.family, kept=4)
    capped.specs, capped.loaded, capped.loads = adapters.specs, adapters.loaded, adapters.loads
    assert adapters.loaded and len(adapters.loaded) == 6
    capped.activate(adapter_key([("l0", 1.0)]))
    assert len(capped.loaded) == 4 and "l0" in capped.loaded
    evicted = next(name for name in names if name not in capped.loaded)
    loads = capped.loads
    capped.activate(adapter_key([(evicted, 1.0)]))
    assert capped.loads == loads + 1 and evicted in capped.loaded and len(capped.loaded) == 4


def test_a_step_distillation_lora_switches_the_defaults_and_spaces_steps_as_few_step_models_do(
    lora_files: Callable[[str], dict[str, TinyLora]], model_cache_dir: Path
) -> None:
    files = lora_files("tiny")
    specs = (
        LoraSpec("lcm", str(files["style"].kohya), few_step=True),
        LoraSpec("lightning", str(files["detail"].kohya), few_step=True),
        LoraSpec("hyper", str(files["detail"].kohya), few_step=True, steps=8, scheduler="DDIM", guidance=1.5),
    )
    model = serve("tiny", specs, model_cache_dir)
    lcm, lightning, hyper = model.info.loras
    assert (lcm.default_scheduler, lcm.default_guidance, lcm.default_steps) == ("LCM", 1.0, 4)
    assert (lightning.default_scheduler, lightning.default_guidance) == ("Euler", 0.0)
    assert (hyper.default_scheduler, hyper.default_guidance, hyper.default_steps) == ("DDIM", 1.5, 8)
    assert lcm.compare_steps == (1, 2, 3, 4, 6, 8) and "LCM" in lcm.schedulers
    # LCM is for few-step models: refused without the LoRA, accepted with it.
    plain = GenerateRequest("a fox", steps=4, scheduler="LCM", guidance=1.0, width=SIZE, height=SIZE)
    with pytest.raises(InvalidRequest, match="can't run the scheduler 'LCM'"):
        validate_for_model(plain, model.info)
    with_lora = GenerateRequest("a fox", steps=4, scheduler="LCM", guidance=1.0, width=SIZE, height=SIZE,
                                loras=(("lcm", 1.0),))  # fmt: skip
    validate_for_model(with_lora, model.info)
    engine = RecordingEngine(model)
    engine.add_job("job", GenerateRequest("a fox", steps=1, scheduler="Euler", guidance=0.0, width=SIZE,
                                          height=SIZE, loras=(("lightning", 1.0),)))  # fmt: skip
    engine.add_job("plain", GenerateRequest("a fox", steps=1, scheduler="Euler", guidance=0.0, width=SIZE, height=SIZE))
    # One step from the last training timestep ("trailing"), not from t=1 ("leading") as the base config would.
    assert int(engine._jobs["job"].lanes[0].timesteps[0]) == 999
    assert int(engine._jobs["plain"].lanes[0].timesteps[0]) < 999
    engine.run_until_idle()


def test_a_tcd_lora_runs_tcd_at_guidance_0_by_its_name_or_by_the_registrys_scheduler(
    lora_files: Callable[[str], dict[str, TinyLora]], model_cache_dir: Path
) -> None:
    files = lora_files("tiny")
    specs = (
        LoraSpec("tcd-sd15", str(files["style"].kohya), few_step=True),
        LoraSpec("my-distill", str(files["detail"].kohya), few_step=True, scheduler="TCD"),
    )
    model = serve("tiny", specs, model_cache_dir)
    for info in model.info.loras:
        assert (info.default_scheduler, info.default_guidance, info.default_steps) == ("TCD", 0.0, 4), info.name
        assert "TCD" in info.schedulers
    # TCD is for few-step models: refused without the LoRA (saying why), accepted with it.
    plain = GenerateRequest("a fox", steps=4, scheduler="TCD", guidance=0.0, width=SIZE, height=SIZE)
    with pytest.raises(InvalidRequest, match=r"can't run the scheduler 'TCD' \(it is for TCD and other few-step"):
        validate_for_model(plain, model.info)
    validate_for_model(dataclasses.replace(plain, loras=(("my-distill", 1.0),)), model.info)
    engine = RecordingEngine(model)
    engine.add_job("tcd", dataclasses.replace(plain, loras=(("tcd-sd15", 1.0),)))
    engine.run_until_idle()
    assert engine._jobs == {} and len(engine.result("tcd").images) == 1


def test_a_lora_comparison_runs_both_rows_in_one_job_each_cell_equal_to_its_row_run_alone(
    lora_files: Callable[[str], dict[str, TinyLora]], model_cache_dir: Path
) -> None:
    """Without the LoRA (Euler a at guidance 7.5, leading spacing) and with a few-step one (LCM at guidance
    1, trailing spacing): two adapter sets, two groups, one job; the cells say which row they are."""
    files = lora_files("tiny")
    model = serve("tiny", (LoraSpec("lcm", str(files["style"].kohya), few_step=True),), model_cache_dir)
    comparison = CompareStepsRequest("a fox", steps=(1, 2, 4), scheduler="LCM", seed=3, guidance=1.0, width=SIZE,
                                     height=SIZE, loras=(("lcm", 1.0),),
                                     without_loras=PlainRow("Euler a", 7.5))  # fmt: skip
    validate_for_model(comparison, model.info)
    engine = RecordingEngine(model)
    engine.add_job("both", comparison)
    engine.run_until_idle()
    for row, alone in enumerate(row_requests(comparison)):
        own = RecordingEngine(model)
        own.add_job("row", alone)
        own.run_until_idle()
        for column in range(3):
            both = engine.final_latents[("both", row * 3 + column)]
            assert relative_error(both, own.final_latents[("row", column)]) <= 1e-4, (row, column)
    images = engine.result("both").images
    assert [image.steps for image in images] == [1, 2, 4, 1, 2, 4]
    plain, with_lora = (parse_generation_parameters(Image.open(io.BytesIO(images[i].png)).info["parameters"])
                        for i in (0, 3))  # fmt: skip
    assert (plain["Prompt"], plain["Sampler"], plain["CFG scale"]) == ("a fox", "Euler a", "7.5")
    assert "Lora hashes" not in plain
    assert (with_lora["Prompt"], with_lora["Sampler"], with_lora["CFG scale"]) == ("a fox <lora:lcm:1>", "LCM", "1")
    assert with_lora["Lora hashes"] == f"lcm: {model.adapters.hashes['lcm']}"  # type: ignore[union-attr]


def test_a_lora_comparison_is_refused_without_a_lora_past_six_step_counts_or_naming_its_plain_row(
    lora_files: Callable[[str], dict[str, TinyLora]], model_cache_dir: Path
) -> None:
    files = lora_files("tiny")
    model = serve("tiny", (LoraSpec("lcm", str(files["style"].kohya), few_step=True),), model_cache_dir)
    base = CompareStepsRequest("a fox", steps=(1, 2, 4), scheduler="LCM", guidance=1.0, loras=(("lcm", 1.0),),
                               without_loras=PlainRow("Euler a", 7.5))  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"^lora_compare needs a LoRA: choose one with lora"):
        validate(dataclasses.replace(base, loras=()))
    with pytest.raises(InvalidRequest, match=r"at most 6 step counts, 12 cells; got 7 step counts\.$"):
        validate(dataclasses.replace(base, steps=(1, 2, 3, 4, 5, 6, 7)))
    both_lcm = dataclasses.replace(base, without_loras=PlainRow("LCM", 1.0))
    with pytest.raises(InvalidRequest, match=r"^Without lcm \(the comparison's first row\): The model tiny can't run"):
        validate_for_model(both_lcm, model.info)
