"""What a job looks like in Discord: progress lines and messages, parameter embeds."""

from __future__ import annotations

import dataclasses
import io

import pytest
from PIL import Image

import bot.replies.messages
from bot.pictures.film import Film
from bot.replies.messages import (
    ProgressState,
    RenderedResult,
    auto_steps_text,
    details_embed,
    encode_result_files,
    parameters_embed,
    progress_bar,
    progress_message,
    progress_text,
    result_message,
)
from inference.imaging import encode_png
from inference.parameters import image_infotext
from inference.protocol import GeneratedImage, JobProgress, JobResult
from inference.queues.eta import Eta
from inference.requests import CompareSchedulersRequest, GenerateRequest
from tests.a1111 import parse_generation_parameters, read_info_from_exif
from tests.bot.fakes import COMPARE, IMAGINE, OWNER, custom_ids, noise_png, png_of, record_for, result_for

JOB_ID = "0123456789abcdef0123456789abcdef"

# --- progress ---------------------------------------------------------------------------------


def test_progress_text_shows_the_queue_position() -> None:
    assert progress_text(IMAGINE, ProgressState(position=4)) == "⏳ Queued — position 4."


def test_progress_text_says_when_a_waiting_job_starts_and_how_long_a_running_one_has_left() -> None:
    waiting = ProgressState(position=2, eta=Eta(left=70.0, starts_in=42.0))
    assert progress_text(IMAGINE, waiting) == "⏳ Queued — position 2 · starts in about 40 s."
    running = ProgressState(started=True, lane_steps={0: 7}, job_step=7, job_total=20, eta=Eta(left=12.2))
    assert progress_text(IMAGINE, running).endswith("step 7/20 · about 12 s left")
    grid = ProgressState(started=True, lane_steps={0: 5}, job_step=27, job_total=35, eta=Eta(left=130.0))
    assert "about 2 min left" in progress_text(COMPARE, grid)


def test_progress_text_says_nothing_of_time_before_there_is_a_measurement() -> None:
    assert "about" not in progress_text(IMAGINE, ProgressState(position=2))
    assert "about" not in progress_text(
        IMAGINE, ProgressState(started=True, lane_steps={0: 7}, job_step=7, job_total=20)
    )


def test_progress_text_shows_step_k_of_n() -> None:
    state = ProgressState(started=True, lane_steps={0: 7}, job_step=7, job_total=20)
    assert "step 7/20" in progress_text(IMAGINE, state)


def test_progress_of_several_images_follows_the_slowest() -> None:
    request = GenerateRequest("x", steps=10, count=2)
    state = ProgressState(started=True, lane_steps={0: 6, 1: 5}, job_step=11, job_total=20)
    text = progress_text(request, state)
    assert "step 5/10" in text and "2 images" in text


def test_one_progress_event_moves_every_lane_it_names() -> None:
    state = ProgressState(started=True)
    state.apply(JobProgress(JOB_ID, 0, 6, 10, 11, 20, lane_steps=((0, 6), (1, 5))))
    assert state.lane_steps == {0: 6, 1: 5}
    assert "step 5/10" in progress_text(GenerateRequest("x", steps=10, count=2), state)


def test_progress_of_a_grid_counts_cells_done() -> None:
    state = ProgressState(started=True, lane_steps={0: 5, 1: 10, 2: 12}, job_step=27, job_total=35)
    text = progress_text(COMPARE, state)
    assert "77%" in text and "2/3 cells done" in text and "longest cell at step 12/20" in text
    assert "27/35" not in text  # the sum of the cells' steps is no step count anyone asked for


def test_a_retry_is_announced() -> None:
    state = ProgressState(started=True, attempt=2)
    assert "attempt 2" in progress_text(IMAGINE, state)


def test_progress_bar_fills_in_proportion() -> None:
    assert progress_bar(0, 10, width=4) == "▱▱▱▱"
    assert progress_bar(5, 10, width=4) == "▰▰▱▱"
    assert progress_bar(10, 10, width=4) == "▰▰▰▰"


async def test_the_progress_message_shows_the_preview_and_a_cancel_button() -> None:
    message = progress_message(record_for(IMAGINE), ProgressState(started=True, preview_png=b"png"))
    assert [file.filename for file in message.files] == ["preview.png"]
    assert message.embeds[0].image.url == "attachment://preview.png"
    assert message.view is not None
    assert custom_ids(message.view) == [f"stepgrid:cancel:{JOB_ID}"]


# --- embeds -----------------------------------------------------------------------------------


def test_the_parameters_embed_lists_every_parameter() -> None:
    request = GenerateRequest("a fox", steps=12, scheduler="DDIM", seed=5, guidance=4.5, width=768, height=512)
    request = GenerateRequest(**{**request.__dict__, "negative_prompt": "blurry", "count": 2, "model": "sd15"})
    fields = {field.name: field.value for field in parameters_embed(request).fields}
    assert fields == {
        "Steps": "12",
        "Seeds": "5, 6",
        "Model": "sd15",
        "Scheduler": "DDIM",
        "Guidance": "4.5",
        "Size": "768×512",
        "Images": "2",
        "Negative prompt": "blurry",
    }


def test_a_job_from_before_models_were_recorded_shows_a_dash_for_its_model() -> None:
    fields = {field.name: field.value for field in parameters_embed(GenerateRequest("a fox")).fields}
    assert fields["Model"] == "—"


def test_the_result_names_the_model_in_its_embed_and_footer() -> None:
    request = dataclasses.replace(IMAGINE, model="sdxl-turbo")
    record = record_for(request)
    message = result_message(record, result_for(record.job_id, request), RenderedResult(()))
    embed = message.embeds[0]
    assert {field.name: field.value for field in embed.fields}["Model"] == "sdxl-turbo"
    assert embed.footer.text == f"job {record.job_id} · sdxl-turbo · random-weight test model"


def test_the_progress_message_names_the_model() -> None:
    record = record_for(dataclasses.replace(IMAGINE, model="flux"))
    footer = progress_message(record, ProgressState()).embeds[0].footer.text
    assert footer == f"job {record.job_id} · flux"


def test_details_name_the_model() -> None:
    record = record_for(dataclasses.replace(COMPARE, model="flux"))
    assert {field.name: field.value for field in details_embed(record).fields}["Model"] == "flux"


def test_an_overlong_prompt_is_clipped_to_fit_an_embed() -> None:
    embed = parameters_embed(GenerateRequest("word " * 2000))
    assert embed.description is not None and len(embed.description) <= 4000


def test_details_name_who_asked() -> None:
    fields = {field.name: field.value for field in details_embed(record_for(COMPARE)).fields}
    assert fields["Requested by"] == f"<@{OWNER}>"
    assert fields["Steps"] == "5, 10, 20"


# --- the Steps film and the parameters chunk ----------------------------------------------------------


def film_result(record_job_id: str, request: GenerateRequest, frame_side: int | None = None) -> JobResult:
    """A film's result, its frames as large as the image or `frame_side` square (the worker caps them)."""
    result = result_for(record_job_id, request)
    size = (frame_side, frame_side) if frame_side else (request.width, request.height)
    frames = tuple(png_of(*size) for _ in range(request.steps))
    image = dataclasses.replace(result.images[0], frames=frames, frames_source="epsilon")
    return dataclasses.replace(result, images=(image,))


def test_a_film_result_posts_the_animation_with_the_image_and_says_what_the_frames_are() -> None:
    request = dataclasses.replace(IMAGINE, steps=6, film=True)
    record = record_for(request)
    result = film_result(record.job_id, request)
    rendered = encode_result_files(record, result, limit=10**7)
    files = rendered.files
    assert [f.filename.rsplit(".", 1)[0] for f in files] == [
        f"stepgrid-film-{request.seed}",
        f"stepgrid-{request.seed}",
    ]
    assert Image.open(io.BytesIO(files[0].data)).n_frames == 6
    embed = result_message(record, result, rendered).embeds[0]
    film_field = {field.name: field.value for field in embed.fields}["Steps film"]
    assert film_field.startswith("6 frames, one per step: ") and "noise prediction" in (film_field or "")
    assert "downscaled" not in (film_field or ""), "frames as large as the image"
    assert embed.image.url == f"attachment://{files[0].filename}"


def test_a_posted_film_carries_the_images_parameters_where_a1111_reads_them() -> None:
    request = dataclasses.replace(IMAGINE, steps=6, film=True)
    record = record_for(request)
    result = film_result(record.job_id, request)
    parameters = image_infotext(request, seed=request.seed, steps=6, model="tiny")
    image = dataclasses.replace(result.images[0], png=encode_png(Image.new("RGB", (64, 64)), parameters=parameters))
    rendered = encode_result_files(record, dataclasses.replace(result, images=(image,)), limit=10**7)
    film = Image.open(io.BytesIO(rendered.files[0].data))
    carried = film.info["comment"].decode() if film.format == "GIF" else read_info_from_exif(film.info["exif"])
    assert carried == parameters


def test_a_film_of_frames_smaller_than_the_image_says_they_are_downscaled() -> None:
    request = dataclasses.replace(IMAGINE, steps=3, width=768, height=640, film=True)
    record = record_for(request)
    result = film_result(record.job_id, request, frame_side=512)  # capped at 512 px by the worker
    embed = result_message(record, result, encode_result_files(record, result, limit=10**7)).embeds[0]
    film_field = {field.name: field.value for field in embed.fields}["Steps film"]
    assert film_field.startswith("3 frames, one per step, downscaled to 512×512 (the image is 768×640): ")


def test_a_film_shrunk_to_fit_the_upload_limit_says_how_small_its_frames_are() -> None:
    request = dataclasses.replace(IMAGINE, steps=4, width=256, height=256, film=True)
    record = record_for(request)
    result = film_result(record.job_id, request)
    noisy = dataclasses.replace(result.images[0], frames=tuple(noise_png(256, 256) for _ in range(4)))
    result = dataclasses.replace(result, images=(noisy,))
    rendered = encode_result_files(record, result, limit=20_000)
    film = Image.open(io.BytesIO(rendered.files[0].data))
    assert film.width < 256
    fields = {field.name: field.value for field in result_message(record, result, rendered).embeds[0].fields}
    assert f", downscaled to {film.width}×" in fields["Steps film"]
    assert "(the image is 256×256): " in fields["Steps film"]


def test_a_film_that_cannot_fit_the_limit_still_delivers_the_image_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def too_big(frames: object, prompt: str, limit: int, parameters: str | None = None, sigmas: object = ()) -> Film:
        raise ValueError(f"a film of 6 frames cannot fit into {limit} bytes")

    monkeypatch.setattr(bot.replies.messages, "film_animation", too_big)
    request = dataclasses.replace(IMAGINE, steps=6, film=True)
    record = record_for(request)
    result = film_result(record.job_id, request)
    rendered = encode_result_files(record, result, limit=10**7)
    assert [f.filename for f in rendered.files] == [f"stepgrid-{request.seed}.png"]
    message = result_message(record, result, rendered)
    assert "did not fit" in (message.content or "")
    film_field = {field.name: field.value for field in message.embeds[0].fields}["Steps film"]
    assert film_field == "6 frames, one per step; not posted (it did not fit the upload limit)."
    assert message.embeds[0].image.url == f"attachment://stepgrid-{request.seed}.png", "the image shows instead"


def test_details_of_a_film_job_say_it_is_a_film_and_of_how_many_frames() -> None:
    fields = {field.name: field.value for field in details_embed(record_for(dataclasses.replace(IMAGINE, film=True)))
              .fields}  # fmt: skip
    assert fields["Steps film"] == "20 frames, one per step"
    assert "Steps film" not in {field.name for field in details_embed(record_for(IMAGINE)).fields}


def test_a_comparison_grid_carries_the_whole_grids_parameters() -> None:
    record = record_for(COMPARE)
    [grid] = encode_result_files(record, result_for(record.job_id, COMPARE), limit=10**7).files
    parsed = parse_generation_parameters(Image.open(io.BytesIO(grid.data)).info["parameters"])
    assert parsed["X Values"] == ", ".join(map(str, COMPARE.steps)) and parsed["Seed"] == str(COMPARE.seed)


def test_a_scheduler_grid_result_says_where_each_row_settles_and_lists_its_rows() -> None:
    request = CompareSchedulersRequest(
        "a fox", schedulers=("Euler a", "DDIM"), steps=(2, 4), seed=3, width=256, height=256
    )
    record = record_for(request)
    result = result_for(record.job_id, request)  # every cell the same image: each row settles at once
    rendered = encode_result_files(record, result, limit=10 * 1024 * 1024)
    assert [file.filename for file in rendered.files] == ["stepgrid-compare-3.png"]
    message = result_message(record, result, rendered)
    assert message.content == rendered.summary
    assert (message.content or "").startswith("For this prompt and seed: Euler a settles at 2 steps; DDIM settles at 2")
    embed = message.embeds[0]
    assert embed.title == "Compare schedulers"
    assert {field.name: field.value for field in embed.fields}["Schedulers"] == "Euler a, DDIM"


def test_a_strength_grid_result_says_what_ran_in_each_cell_and_carries_the_denoising_axis() -> None:
    from inference.requests import CompareStrengthRequest, img2img_steps

    request = CompareStrengthRequest("a fox", strengths=(0.3, 0.6), steps=(10, 30), seed=5, width=256, height=256,
                                     image=png_of(256, 256))  # fmt: skip
    record = record_for(request)
    images = tuple(
        dataclasses.replace(image, strength=strength, steps_ran=img2img_steps(image.steps, strength, flow=False))
        for image, strength in zip(result_for(record.job_id, request).images, request.lane_strengths, strict=True)
    )
    result = dataclasses.replace(result_for(record.job_id, request), images=images)
    rendered = encode_result_files(record, result, limit=10**7)
    [grid] = rendered.files
    parsed = parse_generation_parameters(Image.open(io.BytesIO(grid.data)).info["parameters"])
    assert (parsed["X Type"], parsed["X Values"], parsed["Y Values"]) == ("Denoising", "0.3, 0.6", "10, 30")
    assert (rendered.summary or "").startswith("10 steps at strength 0.3, 0.6 ran 3, 6 steps, moving Δ")
    embed = result_message(record, result, rendered).embeds[0]
    fields = {field.name: field.value for field in embed.fields}
    assert embed.title == "Compare strength" and fields["Strengths"] == "0.3, 0.6"
    assert fields["Steps"] == "10 steps · strength 0.3, 0.6 · ran 3, 6\n30 steps · strength 0.3, 0.6 · ran 9, 18"


def test_progress_of_a_grid_from_an_image_counts_a_cell_done_when_its_share_has_run() -> None:
    request = dataclasses.replace(COMPARE, image=png_of(8, 8), strength=0.5)  # 5, 10, 20 steps: 2, 5, 10 run
    state = ProgressState(started=True, lane_steps={0: 2, 1: 5, 2: 7}, job_step=14, job_total=17)
    text = progress_text(request, state)
    assert "2/3 cells done" in text and "longest cell at step 7/10" in text


def test_an_auto_steps_result_says_the_steps_that_ran_and_whether_it_settled() -> None:
    request = GenerateRequest("a fox", steps=50, scheduler="Euler", auto_steps=True, count=2)
    images = [GeneratedImage(b"", 1, 50, 512, 512, 1.0, steps_ran=ran, auto_settled=ran < 50) for ran in (18, 50)]
    assert auto_steps_text(request, JobResult("j", images=(images[0],), gpu_seconds=1.0)) == (
        "auto → 18 steps (settled: the predicted clean image; at most 50)"
    )
    assert auto_steps_text(request, JobResult("j", images=tuple(images), gpu_seconds=1.0)) == (
        "auto → 18, 50 steps (settled: yes, no; at most 50)"
    )
