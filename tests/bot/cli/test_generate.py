"""`stepgrid imagine` / `compare-*` offline: arguments, outputs, films, registry entries, through the real worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.cli.main import main
from inference.requests import MAX_PIXELS, MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE
from tests.a1111 import parse_generation_parameters, read_info_from_exif
from tests.bot.cli.stepgrid_process import STEPGRID, one_error_line, stepgrid
from tests.bot.cli.test_arguments import REGISTRY
from tests.inference.config_folders import FLUX_SCHNELL, SD15, config_only_folder


def test_the_size_help_gives_the_sizes_the_commands_take(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["imagine", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"multiples of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}, at most {MAX_PIXELS:,} pixels" in help_text


def test_a_refused_request_leaves_no_folder_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "new" / "deeper" / "fox.png"
    assert (
        main(["imagine", "fox", "--model", "tinyy", "-o", str(output), "--film", str(tmp_path / "films" / "f.gif")])
        == 2
    )
    assert "did you mean 'tiny'?" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [], "the folders are made when the image is written"


def test_an_output_that_is_not_a_png_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imagine", "fox", "--model", "tiny", "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["imagine", "fox", "--model", "tiny", "-o", str(tmp_path / "x.jpg")]) == 2
    assert "ending in .png" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_steps_writes_a_labelled_grid_with_the_tiny_model(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    prompt = "a lighthouse on a cliff at dusk, " * 60  # 1,980 characters: far past the text encoder's 77 tokens
    argv = ["compare-steps", prompt, "--model", "tiny", "--seed", "42", "--size", "256", "--steps", "6, 2,4"]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "steps 2,4,6, seed 42" in printed and "random-weight test model" in printed
    assert "The prompt was cut to the model's token limit." in printed
    grid = Image.open(out)
    assert grid.width > 3 * 256 and grid.height > 256  # three cells in a row, captions and footer below
    parsed = parse_generation_parameters(grid.info["parameters"])
    assert (parsed["X Type"], parsed["X Values"], parsed["Seed"], parsed["Model"]) == ("Steps", "2, 4, 6", "42", "tiny")


@pytest.mark.slow
def test_imagine_writes_the_png_with_its_parameters_and_the_steps_film(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out, film = tmp_path / "fox.png", tmp_path / "films" / "fox.gif"
    argv = ["imagine", "café crème 狐 🦊", "--model", "tiny", "--seed", "7", "--size", "576", "--steps", "4"]
    assert main([*argv, "--scheduler", "DPM++ 2M Karras", "-o", str(out), "--film", str(film)]) == 0
    assert os.listdir(film.parent) == ["fox.gif"], "the film where it was asked for, as it was asked for"
    printed = capsys.readouterr().out
    assert f"wrote {out}, {film}: " in printed
    assert "The film's frames are downscaled to 512×512 (the image is 576×576)." in printed
    animation = Image.open(film)
    assert (animation.format, animation.n_frames, animation.width) == ("GIF", 4, 512)
    parsed = parse_generation_parameters(Image.open(out).info["parameters"])
    assert (parsed["Prompt"], parsed["Steps"], parsed["Seed"], parsed["Model"]) == (
        "café crème 狐 🦊",
        "4",
        "7",
        "tiny",
    )
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")


@pytest.mark.slow
def test_imagine_with_steps_auto_says_the_steps_that_ran_and_writes_them_in_the_png(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "fox.png"
    argv = ["imagine", "a red fox", "--model", "tiny", "--seed", "8", "--size", "256", "--scheduler", "Euler"]
    assert main([*argv, "--steps", "auto", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    ran = int(printed.split("steps auto → ")[1].split(" ")[0])
    assert ran < 50 and "(at most 50)" in printed
    parsed = parse_generation_parameters(Image.open(out).info["parameters"])
    assert parsed["Steps"] == str(ran)
    assert parsed["Auto steps"].startswith(f"settled at {ran} of 50 steps; the predicted clean image at sigma ")


def test_a_film_path_that_is_not_an_animation_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imagine", "fox", "-o", str(tmp_path / "a.png"), "--film", str(tmp_path / "a.mp4")]) == 2
    assert "ending in .webp or .gif" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_schedulers_writes_a_grid_with_a_labelled_row_per_scheduler_and_says_where_each_settles(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    argv = ["compare-schedulers", "a red fox", "--model", "tiny", "--seed", "42", "--size", "256",
            "--schedulers", "euler a,DDIM", "--steps", "2,4,6"]  # fmt: skip
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Euler a, DDIM, steps 2,4,6, seed 42" in printed
    assert "For this prompt and seed: Euler a " in printed and "; DDIM " in printed
    grid = Image.open(out)
    # Three columns of cells plus the row labels' margin; two rows plus column labels, captions and footer.
    assert grid.width > 3 * 256 + 50 and grid.height > 2 * 256 + 4 * 28


def test_a_film_path_that_cannot_be_written_is_named_as_the_film(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["imagine", "fox", "-o", str(tmp_path / "a.png"), "--film", "/proc/stepgrid-film.webp"]) == 2
    assert capsys.readouterr().err.startswith("stepgrid: --film /proc/stepgrid-film.webp: can't write in /proc (")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("/proc/stepgrid-test/out.png", "can't be created"),
        ("/proc/out.png", "can't write in /proc"),
        ("/proc/self/status/out.png", "-o /proc/self/status/out.png: /proc/self/status is a file, not a folder."),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_anything_renders(
    output: str, problem: str, tmp_path: Path
) -> None:
    result = stepgrid("imagine", "a fox", "--model", "tiny", "-o", output, cwd=tmp_path)
    assert result.returncode == 2
    assert problem in one_error_line(result)
    assert "loading" not in result.stderr  # refused before the worker started


@pytest.mark.slow
def test_a_finished_image_is_never_lost_when_its_file_cannot_be_written(tmp_path: Path, model_cache_dir: Path) -> None:
    output = tmp_path / "fox.png"
    output.symlink_to("/dev/full")  # the folder takes files, but writing fails: a disk that filled up meanwhile
    result = stepgrid(
        "imagine", "a fox", "--model", "tiny", "--steps", "2", "--size", "256", "--seed", "3", "-o", str(output),
        cwd=tmp_path, STEPGRID_MODEL_CACHE_DIR=str(model_cache_dir),
    )  # fmt: skip
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"could not write {output} (No space left on device); saved to " in line, line
    rescued = Path(line.split("saved to ", 1)[1].removesuffix(" instead."))
    assert rescued.name == "fox.png" and Image.open(rescued).size == (256, 256)


# A shell starts a foreground job with SIGINT at its default and unblocked. This test's own process may have it
# ignored or blocked by then (libraries earlier tests loaded), and both survive exec: seen as a CLI that rendered
# on through Ctrl-C only in whole-suite runs. So the CLI is started as a shell would start it.
AS_A_SHELL_STARTS_IT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); os.execv(sys.argv[1], sys.argv[1:])"
)


@pytest.mark.slow
def test_ctrl_c_during_a_render_stops_without_a_traceback(tmp_path: Path, model_cache_dir: Path) -> None:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("STEPGRID_")}
    env = {**clean, "STEPGRID_MODEL_CACHE_DIR": str(model_cache_dir), "STEPGRID_MAX_BATCH_LANES": "1"}
    slow = ",".join(str(steps) for steps in range(139, 151))  # twelve cells on one lane: still running when interrupted
    command = [str(STEPGRID), "compare-steps", "a fox", "--model", "tiny", "--size", "512", "--steps", slow]
    process = subprocess.Popen(
        [sys.executable, "-c", AS_A_SHELL_STARTS_IT, *command, "-o", str(tmp_path / "grid.png")], cwd=tmp_path,
        env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # the worker is ready and the job submitted right after this line
        seen.append(line)
        if line.startswith("model tiny on"):
            break
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130
    stderr = "".join(seen) + rest
    assert "Traceback" not in stderr, stderr
    assert rest.strip().splitlines()[-1] == "stepgrid: interrupted; nothing was written."
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "ladder", "scheduler"),
    [("tiny-flux", "1,2,3,4,6,8", "Euler"), ("tiny-sdxl", "5,10,20,30,40,50", "Euler a")],
)
def test_compare_steps_without_steps_uses_the_models_own_ladder_and_scheduler(
    model: str, ladder: str, scheduler: str, tmp_path: Path, model_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    assert (
        main(["compare-steps", "a lighthouse", "--model", model, "--seed", "1", "--size", "256", "-o", str(out)]) == 0
    )
    assert f"{scheduler}, steps {ladder}, seed 1" in capsys.readouterr().out
    assert Image.open(out).width > 3 * 256


@pytest.mark.slow
def test_a_scheduler_the_model_cant_run_exits_2_with_the_ones_it_can(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "x.png"
    assert main(["imagine", "fox", "--model", "tiny-flux", "--scheduler", "DDIM", "--size", "256", "-o", str(out)]) == 2
    assert "can't run the scheduler 'DDIM'; choose one of: Euler, Heun, DPM++ 2M, UniPC." in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_registry_file_as_the_model_runs_its_first_model(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    registry = tmp_path / "models.toml"
    registry.write_text('[[models]]\nname = "quick"\nsource = "tiny-flux"\nsteps = 2\n\n'
                        '[[models]]\nname = "gone"\nsource = "./no/such/folder"\n')  # fmt: skip
    out = tmp_path / "fox.png"
    assert main(["imagine", "fox", "--model", str(registry), "--size", "256", "-o", str(out)]) == 0
    assert "Euler, steps 2," in capsys.readouterr().out and out.is_file()


def test_a_registry_name_with_a_typo_exits_2_naming_the_configured_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    assert main(["imagine", "fox", "--model", "qiuck", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "stepgrid: --model qiuck: no such model (did you mean 'quick'?); "
        "choose one of the configured models (quick, sd,"
    )
    assert err.count("\n") == 1


@pytest.mark.slow
def test_imagine_with_a_registry_name_runs_that_entry_with_its_defaults(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    out = tmp_path / "grid.png"
    assert main(["compare-steps", "a fox", "--model", "sd", "--seed", "3", "-o", str(out)]) == 0
    assert "Euler a, steps 2,4, seed 3" in capsys.readouterr().out  # the entry's ladder, its family's scheduler
    assert Image.open(out).width > 2 * 256


@pytest.mark.slow
def test_steps_over_a_registry_ceiling_exit_2_in_one_line(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    assert main(["imagine", "fox", "--model", "quick", "--steps", "12", "-o", str(tmp_path / "x.png")]) == 2
    assert "steps must be at most 8 for the model quick; got 12." in capsys.readouterr().err


@pytest.mark.parametrize("given", ["./juggernaut.safetensors", "juggernaut.safetensors", "."])
def test_a_single_file_checkpoint_as_model_says_how_to_convert_it_before_loading(tmp_path: Path, given: str) -> None:
    """The same hint as a checkpoint named in STEPGRID_MODEL, for the file or the folder it was downloaded into."""
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    header = json.dumps({"conditioner.embedders.1.model.ln_final.weight": tensor}).encode()  # an SDXL checkpoint
    (tmp_path / "juggernaut.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    result = stepgrid("imagine", "a fox", "--model", given, "-o", str(tmp_path / "out.png"), cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "is a single-file checkpoint (juggernaut.safetensors); Stepgrid loads diffusers folders." in line
    assert "StableDiffusionXLPipeline.from_single_file(" in line
    assert "loading" not in result.stderr, "refused before a worker started"


@pytest.mark.parametrize(
    ("configs", "options", "refusal"),
    [
        (FLUX_SCHNELL, ["--guidance", "3"], "(flux) ignores guidance; leave it out (got 3)."),
        (FLUX_SCHNELL, ["--negative", "blurry"], "(flux) doesn't use a negative prompt; leave it out."),
        (FLUX_SCHNELL, ["--size", "264"], "width must be a multiple of 16 for the model"),
        (FLUX_SCHNELL, ["--scheduler", "DDIM"], "can't run the scheduler 'DDIM'; choose one of: Euler, Heun, DPM++ 2M"),
        (SD15, ["--scheduler", "LCM"], "can't run the scheduler 'LCM' (it is for LCM and other few-step distills)"),
    ],
)
def test_a_model_specific_refusal_comes_before_the_model_loads(
    tmp_path: Path, configs: dict[str, object], options: list[str], refusal: str
) -> None:
    """The folder's configs say what the model can do; its weights can't even be read, so a refusal that
    waited for the load would be a load error instead (and, with a real model, minutes later)."""
    folder = config_only_folder(tmp_path / "model", configs)
    result = stepgrid(
        "imagine", "a fox", "--model", str(folder), *options, "-o", str(tmp_path / "out.png"), cwd=tmp_path
    )
    assert result.returncode == 2
    assert refusal in one_error_line(result)
    assert "loading" not in result.stderr, "refused before a worker started"


@pytest.mark.slow
def test_a_prompt_on_two_lines_writes_the_film_with_the_images_parameters(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out, film = tmp_path / "fox.png", tmp_path / "fox.webp"
    argv = ["imagine", "a fox\nin the snow", "--model", "tiny", "--steps", "3", "--size", "256", "--seed", "9"]
    assert main([*argv, "-o", str(out), "--film", str(film)]) == 0  # was Pillow's multiline ValueError, exit 1
    animation = Image.open(film)
    assert animation.n_frames == 3
    assert read_info_from_exif(animation.info["exif"]) == Image.open(out).info["parameters"]
    assert "Steps: 3" in read_info_from_exif(animation.info["exif"])


@pytest.mark.slow
def test_a_grid_written_over_an_existing_file_says_so_and_names_the_device(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    out.write_bytes(b"yesterday's grid")
    argv = ["compare-steps", "a fox", "--model", "tiny", "--steps", "1,2", "--size", "256", "--device", "cpu"]
    assert main([*argv, "-o", str(out)]) == 0
    assert f"replaced the file already there: {out}." in capsys.readouterr().out
    assert Image.open(out).size[0] > 2 * 256 and os.listdir(tmp_path) == ["grid.png"]


def test_imagine_from_an_image_and_upscale_it_x2_through_the_real_worker(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    source = tmp_path / "in.jpg"
    Image.new("RGB", (300, 260), (30, 120, 200)).save(source)
    out = tmp_path / "fox.png"
    argv = ["imagine", "a fox", "--model", "tiny", "--seed", "3", "--steps", "10", "--scheduler", "Euler"]
    assert main([*argv, "--image", str(source), "--strength", "0.6", "-o", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (296, 256), "the input's size, to the model's multiple"
    parsed = parse_generation_parameters(image.info["parameters"])
    assert (parsed["Steps"], parsed["Denoising strength"]) == ("10", "0.6")
    capsys.readouterr()
    # The prompt comes from the image's own parameters; the result is twice its size.
    upscaled = tmp_path / "fox-x2.png"
    assert main(["upscale", str(out), "--model", "tiny", "--steps", "4", "--strength", "0.5", "-o", str(upscaled)]) == 0
    result = Image.open(upscaled)
    assert result.size == (592, 512)
    parsed = parse_generation_parameters(result.info["parameters"])
    assert parsed["Prompt"] == "a fox"
    assert (parsed["Hires upscale"], parsed["Hires steps"], parsed["Denoising strength"]) == ("2", "4", "0.5")


def test_upscale_refuses_an_image_without_a_prompt_in_one_line(tmp_path: Path) -> None:
    source = tmp_path / "plain.png"
    Image.new("RGB", (256, 256)).save(source)
    result = stepgrid("upscale", str(source), "--model", "tiny", "-o", str(tmp_path / "out.png"), cwd=tmp_path)
    assert result.returncode == 2
    assert "carries no prompt in its parameters: give one with --prompt" in one_error_line(result)


@pytest.mark.slow
def test_compare_strength_writes_a_grid_of_strengths_by_step_counts_saying_what_ran(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    source = tmp_path / "in.png"
    Image.new("RGB", (256, 256), (200, 160, 40)).save(source)
    out = tmp_path / "strength.png"
    argv = ["compare-strength", str(source), "--prompt", "a sun", "--model", "tiny", "--seed", "5"]
    assert main([*argv, "--scheduler", "Euler", "--strengths", "0.9,0.5", "--steps", "6,4", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "4 steps at strength 0.5, 0.9 ran 2, 3 steps" in printed and "6 steps at strength 0.5, 0.9 ran 3, 5" in printed
    )
    grid = Image.open(out)
    assert 2 * 256 < grid.width < 3 * 256 and 2 * 256 < grid.height < 3 * 256, "two strengths by two step counts"
    parsed = parse_generation_parameters(grid.info["parameters"])
    assert (parsed["X Type"], parsed["X Values"], parsed["Y Type"], parsed["Y Values"]) == (
        "Denoising", "0.5, 0.9", "Steps", "4, 6"
    )  # fmt: skip
    assert (parsed["Denoising strength"], parsed["Prompt"], parsed["Model"]) == ("0.5", "a sun", "tiny")


def test_compare_strength_with_one_strength_exits_2_before_loading_anything(tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    Image.new("RGB", (256, 256)).save(source)
    argv = ["compare-strength", str(source), "--prompt", "a sun", "--model", "tiny", "--strengths", "0.5"]
    result = stepgrid(*argv, "-o", str(tmp_path / "out.png"), cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == "stepgrid: A strength comparison needs 2 to 6 strengths; got 1."
