"""dogcat's Gradio demo: one photo in; a verdict (cat, dog, neither, not sure, too small), P(cat), P(dog)
and, when asked, a heatmap of where the model looked, out.

Run it with `dogcat demo`, `python demos/gradio_app.py`, or `gradio demos/gradio_app.py` (reload
mode imports this module and serves `demo`). `dogcat space build OUT` copies this very file to
OUT/app.py, next to a vendored copy of the dogcat package and the model, for a Hugging Face Space.

The model is the one `dogcat predict` uses: $DOGCAT_MODEL if set, else the shipped model (in a
built Space, OUT/models/). It is loaded once, when this module is imported. All image handling
is dogcat's (dogcat.inference / dogcat.preprocessing); this file only wires it to Gradio.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow start-up chatter; errors still show

import gradio as gr

from dogcat.detector import DESCRIPTION
from dogcat.explain import overlay
from dogcat.inference import Classifier
from dogcat.preprocessing import (
    IMAGE_SUFFIXES,
    MAX_FILE_BYTES,
    ImageError,
    load_image,
)

HERE = Path(__file__).resolve().parent

# Redistributable photos only (sources and licences in examples/LICENSES.md). The Kaggle images
# the model was trained on are not shipped as examples: their redistribution terms are unclear.
EXAMPLES = [HERE / "examples" / name for name in ("cat-chelsea.jpg", "dog-darknet.jpg", "astronaut.jpg", "rocket.jpg")]

# The Classifier runs one model call at a time (it holds a lock), so more parallel workers would
# only wait on it. Two let one request's decoding overlap another's model call on a 2-vCPU machine
# (a free CPU Space). On this project's 2-core machine, limits of 1, 2 and 4 gave the same burst
# throughput within noise (benchmarks/gradio_space.py): the limit bounds contention, not speed.
CONCURRENCY_LIMIT = 2
# At ~0.1 s per photo, 64 waiting requests clear in a few seconds; past that a new request is
# refused at once ("queue is full") instead of waiting minutes behind a burst.
QUEUE_MAX_SIZE = 64
# Uploads are deleted an hour after they arrive, so a long-running Space does not fill its disk.
DELETE_CACHE = (3600, 3600)
# Error toasts go after this many seconds (Gradio's default is 10): photos are classified as they
# arrive, so the next photo's result should not sit under the last one's error.
ERROR_SECONDS = 4

# The probabilities are the classifier's, which it gives for any photo: a bar for "dog" under "Neither
# a cat nor a dog" must say that it answers another question.
PROBABILITIES_LABEL = "If it is a cat or a dog"
NO_PHOTO = "Add a photo first: upload one, paste one, or pick an example below."
ABOUT = (
    "A MobileNetV2 fine-tuned with Keras 3 says whether a photo shows a cat or a dog, and what it looks "
    "like. A photo of neither (try the astronaut and the rocket), too small a photo, or one the model is "
    "unsure of, is said to be so. The bars under the verdict are the classifier's, which it gives for any "
    "photo: how likely each answer is if the photo is of a cat or a dog.\n\n" + DESCRIPTION
)

CLASSIFIER = Classifier.from_path()
CLASS_NAMES = list(CLASSIFIER.class_names.values())  # the order of the result's p_<class> fields
for warning in CLASSIFIER.warnings:  # e.g. no detector beside the model: cat/dog verdicts only
    print(f"dogcat: warning: {warning}", file=sys.stderr)


def predict(image: dict[str, Any] | str | None, explain: bool = False) -> tuple[str, dict[str, float], dict, str | None]:
    """Classify one uploaded photo: (the verdict in words with what it looks like, {"cat": p, "dog": p}
    summing to 1, the machine-readable result (`Prediction.as_row`, the row of `dogcat predict --json`:
    "verdict" is cat, dog, neither, unsure or too_small; "looks_like" ImageNet's top class), the Grad-CAM overlay's PNG
    file when `explain` and the model can give one, else None). This is the /predict API.

    The overlay is opt-in (a checkbox, off by default): drawing it adds about a third to each
    prediction's time, before Gradio encodes and sends the PNG (benchmarks/explain.py), and API
    clients that only want the verdict should not pay for a picture they discard.

    `image` is the upload as Gradio hands it over unprocessed (a file-data dict whose `path` is
    the uploaded copy in Gradio's cache) or a plain path. Anything that is not a readable image
    becomes a gr.Error with a one-line reason; no traceback reaches the user.
    """
    if isinstance(image, dict):
        path, name = image.get("path"), image.get("orig_name") or "the upload"
    else:
        path, name = image, "the upload"
    if not path:
        raise gr.Error("No image received: upload a photo of a cat or a dog.", duration=ERROR_SECONDS, print_exception=False)
    result = CLASSIFIER.predict([path], explain=bool(explain) and CLASSIFIER.can_explain)[0]
    if result.error:
        raise gr.Error(f"Cannot read {name}: {result.error}.", duration=ERROR_SECONDS, print_exception=False)
    looked = None if result.heatmap is None else overlay_file(path, result.heatmap)
    # The client's own file name, not the server's cache path, and under "file": gradio_client would
    # take a dict with a "path" for a file to download.
    record = {"file": name, **{k: v for k, v in result.as_row(CLASS_NAMES).items() if k != "path"}}
    return result.sentence, result.probabilities, record, looked


def overlay_file(path: str, heatmap) -> str:
    """The overlay, as a PNG file of this request's own in Gradio's cache (swept by DELETE_CACHE,
    as Gradio's own files are).

    Not a PIL image: Gradio caches those by content and rewrites the one file in place, so two
    requests for the same photo raced, one truncating the file while the other was sent
    ("Too little data for declared Content-Length", 7 of 100 for the shipped cat example).
    """
    folder = Path(overlay_output.GRADIO_CACHE) / "dogcat-overlays"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix="overlay-", suffix=".png", delete=False) as handle:
        overlay(path, heatmap).save(handle, format="PNG")
    overlay_output.temp_files.add(handle.name)
    return handle.name


def show(image: dict[str, Any] | str | None, explain: bool = False) -> tuple:
    """`predict` for the page: a photo just uploaded, pasted, picked from the examples, or the checkbox
    ticked. A cleared photo clears the outputs; an unreadable one says why in the verdict's place,
    where it stays (a toast would vanish and leave red badges); the overlay's panel shows only with one."""
    if not image:
        return None, None, None, gr.Image(value=None, visible=False)
    try:
        verdict, probabilities, record, looked = predict(image, explain)
    except gr.Error as error:
        return error.message, None, None, gr.Image(value=None, visible=False)
    return verdict, probabilities, record, gr.Image(value=looked, visible=looked is not None)


def classify(image: dict[str, Any] | str | None, explain: bool = False) -> tuple:
    """The Classify button: `show`, and with no photo yet, a sentence saying what to do instead of nothing."""
    if not image:
        return NO_PHOTO, None, None, gr.Image(value=None, visible=False)
    return show(image, explain)


def from_file(file: dict[str, Any] | str | None) -> tuple:
    """A photo chosen with the file button, for the photo box: its upright pixels as a lossless PNG.

    The photo box accepts only what the browser calls image/*, and a browser that cannot show HEIC
    (Chrome, Firefox) often gives a .heic file no type at all, so an iPhone photo is refused there.
    The button picks by extension instead; dogcat decodes the photo (same limits as any upload) and
    the PNG it shows is classified like any photo, with the same pixels, so the same verdict.
    """
    path = file.get("path") if isinstance(file, dict) else file
    if not path:
        return gr.update(), *(gr.update() for _ in range(4))
    name = (file.get("orig_name") if isinstance(file, dict) else None) or Path(path).name
    try:
        picture = load_image(path)
    except ImageError as error:
        reason = str(error).removeprefix(f"{path}: ")
        return gr.update(), f"Cannot read {name}: {reason}.", None, None, gr.Image(value=None, visible=False)
    # A file of this request's own in Gradio's cache, swept by DELETE_CACHE (as overlay_file's).
    folder = Path(image_input.GRADIO_CACHE) / "dogcat-photos"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f"{Path(name).stem[:40]}-", suffix=".png", delete=False) as handle:
        picture.save(handle, format="PNG", compress_level=1)
    image_input.temp_files.add(handle.name)
    return handle.name, *(gr.update() for _ in range(4))


with gr.Blocks(title="dogcat: cat or dog?", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
    gr.Markdown("# Cat, dog, or neither?\nUpload a photo of your pet, or try one of the examples below.")
    with gr.Row():
        # preprocess=False below: the uploaded file goes to dogcat's decoder untouched, so a
        # corrupt file is reported by dogcat in one line instead of failing inside Gradio.
        with gr.Column():
            image_input = gr.Image(type="filepath", label="Photo", sources=["upload", "clipboard"])
            # By extension, so an iPhone's HEIC is accepted in any browser (see from_file).
            file_input = gr.UploadButton("Choose a photo file (iPhone HEIC and AVIF too)", size="sm",
                                         file_types=sorted(IMAGE_SUFFIXES), variant="secondary")
            explain_input = gr.Checkbox(label="Show where it looked (a heatmap over the photo)", value=False)
        with gr.Column():
            verdict_output = gr.Label(label="Verdict")
            # Secondary, without a heading of its own: its top class never contradicts the verdict above.
            label_output = gr.Label(num_top_classes=2, label=PROBABILITIES_LABEL, show_heading=False)
            overlay_output = gr.Image(type="filepath", label="Where it looked", format="png", interactive=False, visible=False)
            with gr.Accordion("Result for programs (JSON)", open=False):
                result_output = gr.JSON(label="Result", show_label=False)
    outputs = [verdict_output, label_output, result_output, overlay_output]
    with gr.Row():
        gr.ClearButton([image_input, *outputs])
        submit = gr.Button("Classify", variant="primary")
    file_input.upload(from_file, inputs=[file_input], outputs=[image_input, *outputs], api_visibility="private",
                      preprocess=False, concurrency_limit=CONCURRENCY_LIMIT)
    gr.Examples(examples=[[str(path)] for path in EXAMPLES], inputs=[image_input], cache_examples=False)
    with gr.Accordion("About", open=False):  # how it works, below the page: not what a pet owner reads first
        gr.Markdown(ABOUT)
    # The page classifies as soon as a photo arrives or the checkbox changes; the button stays for a
    # second look. These are private: /predict below remains the one API endpoint.
    for event in (image_input.change, explain_input.change):
        event(show, inputs=[image_input, explain_input], outputs=outputs, api_visibility="private",
              preprocess=False, concurrency_limit=CONCURRENCY_LIMIT)
    submit.click(classify, inputs=[image_input, explain_input], outputs=outputs, api_visibility="private",
                 preprocess=False, concurrency_limit=CONCURRENCY_LIMIT)
    # The API: the same outputs, and a bad file is an error for the client, not a verdict.
    api = gr.Button(visible=False)
    api.click(predict, inputs=[image_input, explain_input], outputs=outputs, api_name="predict",
              preprocess=False, concurrency_limit=CONCURRENCY_LIMIT)

# api_open=False: the REST route cannot skip the queue, so the limits above hold for API clients too.
demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE, api_open=False)


def launch(server_name: str | None = None, server_port: int | None = None, share: bool = False,
           share_hint: str | None = None) -> None:
    """Serve `demo`; None means $GRADIO_SERVER_NAME / $GRADIO_SERVER_PORT, else 127.0.0.1:7860.

    Hugging Face Spaces sets those variables (0.0.0.0:7860) and runs `python app.py`. `share`:
    also a temporary public gradio.live link. Gradio's own start-up lines are replaced by ours:
    its hint to "set `share=True` in `launch()`" is no use to someone who ran `dogcat demo`, who
    gets `share_hint` instead.
    """
    demo.launch(
        server_name=server_name,
        server_port=server_port,
        share=share,
        max_file_size=MAX_FILE_BYTES,  # dogcat's own upload limit, enforced before the file is stored
        show_error=False,  # only gr.Error messages reach users; anything unexpected stays in the log
        quiet=True,
        prevent_thread_lock=True,
    )
    if getattr(demo, "local_url", None) is None:
        return  # not serving (a test's stand-in for launch)
    print(f"* Running on {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"* Public link (for 1 week): {demo.share_url}", flush=True)
    elif share_hint:
        print(f"* {share_hint}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    launch()
