"""dogcat's Streamlit page: drop in photos, get a verdict (cat, dog, neither, not sure, too small).

Run it with `dogcat app [--model PATH]`. UI code only: decoding, orientation, size limits and
the model call all live in the dogcat package.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from dogcat.detector import DESCRIPTION
from dogcat.explain import overlay
from dogcat.inference import Classifier, Prediction
from dogcat.model_folder import ModelFolder
from dogcat.preprocessing import FORMAT_NAMES, IMAGE_SUFFIXES, ImageError, load_image
from dogcat.verdict import NEITHER, TOO_SMALL, UNSURE, VERDICTS, VerdictRules

UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)  # what the CLI and Gradio read, too
PREVIEW_SIZE = 512  # photos are shown at most this wide; large JPEGs are decoded at reduced scale
ERROR = "error"  # the summary's name for uploads that could not be read
VERDICT_NAMES = {"cat": "Cats", "dog": "Dogs", NEITHER: "Neither", UNSURE: "Not sure", TOO_SMALL: "Too small",
                 ERROR: "Unreadable"}
PROBABILITIES_CAPTION = "If it is a cat or a dog:"
# Below 1: at 1.00 every photo would be "not sure", even one the bars call 100%.
MAX_THRESHOLD = 0.99


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


@st.cache_resource(show_spinner="Loading the model...")
def load_classifier(model_path: str) -> Classifier:
    """One Classifier per process, shared by every session; its lock makes concurrent use safe."""
    return Classifier.from_path(model_path)


def sidebar(model_path: str) -> tuple[VerdictRules, bool, bool]:
    settings = ModelFolder.resolve(model_path).predict_config()  # the model's own [predict] settings, saved with its run
    with st.sidebar:
        threshold = st.slider(
            "Say \"not sure\" below this confidence", min_value=0.5, max_value=MAX_THRESHOLD,
            value=min(max(settings.threshold, 0.5), MAX_THRESHOLD), step=0.01, key="threshold",
        )
        use_camera = st.toggle("Use the camera", key="use_camera")
        explain = st.toggle("Show where it looked", key="explain",
                            help="A heatmap (Grad-CAM) over each photo: red where the model found what it answered.")
        about(model_path)
    return VerdictRules(unsure_below=threshold, min_side=settings.min_side), use_camera, explain


def about(model_path: str) -> None:
    card = ModelFolder.resolve(model_path).card()
    with st.expander("About this model"):
        st.markdown("MobileNetV2 (ImageNet) fine-tuned to tell cats from dogs, with Keras 3.")
        test, training = card.get("test"), card.get("training", {})
        if test:
            st.markdown(
                f"Measured on {test['count']} held-out Kaggle photos: "
                f"**{test['accuracy']:.1%} accuracy**, log loss {test['log_loss']:.3f}."
            )
        else:
            st.markdown("No measured metrics were found beside this model.")
        st.markdown(neither_text(test or {}))
        with st.expander("Technical details"):  # for whoever maintains the server, not for a pet owner
            if training.get("data_manifest_sha256"):
                st.caption(f"Data manifest sha256 {training['data_manifest_sha256'][:12]}...")
            st.caption(f"Model file: {model_path}")


# Under "looks like": what a general photo recognizer (ImageNet's 1,000 kinds) guesses, in a pet owner's words.
HINT_CAPTION = "A general photo recognizer's guess at what it shows: a hint, not a claim."


def neither_text(test: dict) -> str:
    """How "neither" is decided (dogcat.detector.DESCRIPTION), with what was measured where the model card has it."""
    text = DESCRIPTION
    folder, turned_away = test.get("neither_folder"), test.get("turned_away")
    if folder and turned_away:
        text += (
            f" Measured: {folder['flagged']:.0%} of {folder['count']} photos with no cat or dog were not called a cat "
            f"or a dog ({folder.get('neither', folder['flagged']):.0%} neither), and {turned_away['neither']:.1%} of "
            f"the real test cats and dogs were turned away."
        )
    return text + " It still lets through some raccoons, horses and drawings."


def collect_uploads(use_camera: bool) -> list[Upload]:
    files = st.file_uploader(
        "Photos of cats or dogs", type=UPLOAD_TYPES, accept_multiple_files=True, key="uploads"
    )
    uploads = [Upload(f.name, f.getvalue()) for f in files or []]
    if use_camera:
        shot = st.camera_input("Take a photo", key="camera")
        if shot is not None:  # first, so its result sits right below the camera, not under every upload
            uploads.insert(0, Upload("camera photo", shot.getvalue()))
    return uploads


def plain(text: str) -> str:
    """`text` shown as typed: Streamlit renders errors and captions as Markdown, so an upload named
    `![x](https://host/a.png).jpg` made each viewer's browser fetch that address."""
    return re.sub(r"([\\`*_\[\]()#!|<>~$])", r"\\\1", text)


def show_prediction(upload: Upload, prediction: Prediction) -> None:
    if prediction.error:
        st.error(f"{plain(upload.name)}: {plain(prediction.error)}")
        return
    # st.image ignores EXIF orientation (streamlit#6809), so show the upright decode instead.
    # This is a second, display-sized decode on purpose: the model's input must come from
    # decode_image on the original bytes, exactly as in training, not from this preview. It is the
    # only other one: the heatmap is drawn over this same upright preview, not over a third decode.
    try:
        preview = load_image(io.BytesIO(upload.data), draft_size=PREVIEW_SIZE, max_side=PREVIEW_SIZE)
    except ImageError:
        preview = None  # unreachable in practice: predict decoded the same bytes
    if prediction.heatmap is None or preview is None:
        picture, verdict = st.columns([1, 1])
    else:
        picture, looked, verdict = st.columns([1, 1, 1])
        looked.image(overlay(preview, prediction.heatmap, max_side=PREVIEW_SIZE),
                     caption=f"Where it looked for a {prediction.label}", width="stretch")
    if preview is not None:
        picture.image(preview, caption=plain(upload.name), width="stretch")
    heading, _, detail = prediction.text.partition(" (")  # "Too small to judge (60x40 px; ...)": the size below
    verdict.subheader(prediction.text if prediction.verdict == UNSURE else heading)
    if detail and prediction.verdict == TOO_SMALL:
        verdict.caption(detail.rstrip(")"))
    if prediction.verdict == NEITHER:
        verdict.caption("No cat or dog found in this photo.")
    elif prediction.verdict in (UNSURE, TOO_SMALL):
        verdict.caption("The model cannot tell from this photo.")
    if prediction.hint:
        verdict.markdown(f"{prediction.hint[0].upper()}{prediction.hint[1:]}")
        verdict.caption(HINT_CAPTION)
    # Secondary: the classifier's two probabilities, which it gives for any photo, so a bar for "dog"
    # under "Neither a cat nor a dog" says which question it answers.
    verdict.caption(PROBABILITIES_CAPTION)
    for label, probability in prediction.probabilities.items():
        verdict.progress(probability, text=f"{label}: {percent(probability)}")


def percent(probability: float) -> str:
    """Rounded down to 0.1%, so the bars never read at or over the slider's threshold (a multiple of
    0.01) while the heading says "not sure", nor 100.0% for a model that is never quite certain."""
    return f"{math.floor(probability * 1000 + 1e-9) / 10:.1f}%"


def main() -> None:
    st.set_page_config(page_title="dogcat", page_icon=":dog:")
    st.title("Cat, dog, or neither?")
    model_path = str(ModelFolder.resolve().keras)
    rules, use_camera, explain = sidebar(model_path)
    uploads = collect_uploads(use_camera)
    if not uploads:
        st.info(f"Upload one or more photos ({FORMAT_NAMES}) to classify them.")
        return
    # The spinner takes the upload prompt's place at once, so the prompt does not linger, faded,
    # beside the listed files while the photos are classified.
    with st.spinner(f"Classifying {len(uploads)} photo{'s' if len(uploads) > 1 else ''}..."):
        classifier = load_classifier(model_path)
        explain = explain and classifier.can_explain  # a model that cannot simply shows no heatmaps
        predictions = classifier.predict([u.data for u in uploads], names=[u.name for u in uploads], rules=rules,
                                         explain=explain)
    for warning in classifier.warnings:  # the server's folders are not the visitor's business
        st.warning(plain(warning.replace(str(Path(model_path).parent), "the model's folder")))
    shown = summary(predictions)
    for upload, prediction in zip(uploads, predictions, strict=True):
        if (prediction.verdict or ERROR) in shown:
            show_prediction(upload, prediction)


def summary(predictions: list[Prediction]) -> set[str]:
    """Counts per verdict at the top, as a filter: the verdicts (and errors) to show below."""
    counts = Counter(p.verdict or ERROR for p in predictions)
    present = [v for v in (*VERDICTS, ERROR) if counts[v]]
    if len(predictions) < 2:
        return set(present)
    # Keyed by the verdicts present: a new kind of verdict (another upload) starts again from "show all".
    chosen = st.pills(f"{len(predictions)} photos", present, selection_mode="multi", default=present,
                      key=f"show-{'-'.join(present)}",
                      format_func=lambda v: f"{VERDICT_NAMES[v]}: {counts[v]}")
    return set(chosen or present)


if __name__ == "__main__":
    main()
