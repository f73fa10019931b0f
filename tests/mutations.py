"""Break the code on purpose, one break at a time, and check that the tests named for it fail.

    python tests/mutations.py [NAME ...]        (or `nox -s mutations`; not part of the default sessions)

A test that cannot fail proves nothing: an audit found breaks no test caught, because
the tiny untrained test model answers [0.5, 0.5] for every photo. Each entry below is one break
(a file, text that must occur exactly once, its replacement) and the fast tests that should catch
it. The repository is copied to a temporary folder first, so the checkout is never touched.
Not collected by pytest: its name does not start with test_, and it defines no test functions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]


class Mutation(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "batch leaves a refused token to ray.init", "dogcat/batch.py",
        "    check_token(address)\n", "\n",
        ("tests/test_batch.py::test_a_client_the_cluster_refuses_is_one_line_naming_the_fix",),
    ),
    Mutation(
        "data prepare decodes every file", "dogcat/data.py",
        "                if len(chosen[label]) == per_class:\n", "                if False:\n",
        ("tests/test_data.py::test_prepare_decodes_only_what_the_sample_needs",),
    ),
    Mutation(
        "HEIC not registered with Pillow", "dogcat/preprocessing.py",
        "    pillow_heif.register_heif_opener()  #", "    pass  #",
        ("tests/test_phone_photos.py::test_predict_and_the_python_api_read_phone_photos",),
    ),
    Mutation(
        "phone photos left out of folder listings", "dogcat/preprocessing.py",
        '".heic", ".heif", ".avif", ', "",
        ("tests/test_phone_photos.py::test_folders_list_phone_photos_and_name_what_they_skip",),
    ),
    Mutation(
        "temperature folded into the last layer's bias only", "dogcat/calibration.py",
        "output.set_weights([np.asarray(w) / temperature for w in output.get_weights()])",
        "kernel, bias = output.get_weights()\n    output.set_weights([kernel, bias / temperature])",
        ("tests/test_calibration.py",
         "tests/test_train.py::test_saved_model_is_the_best_weights_with_the_recorded_temperature"),
    ),
    Mutation(
        "class-names unpickler lets builtins through", "dogcat/artifacts.py",
        "    def find_class(self, module: str, name: str):\n",
        "    def find_class(self, module: str, name: str):\n"
        "        if module == 'builtins':\n            return super().find_class(module, name)\n",
        ("tests/test_artifacts.py", "tests/test_cli.py::test_a_malicious_class_names_file_stops_predict_with_one_line"),
    ),
    Mutation(
        "a loaded model's hidden Dense kernel doubled", "dogcat/model.py",
        "        model = keras.saving.load_model(path, compile=compile, safe_mode=True)\n",
        "        model = keras.saving.load_model(path, compile=compile, safe_mode=True)\n"
        "        model.get_layer('dense').kernel.assign(model.get_layer('dense').kernel * 2)\n        return model\n",
        ("tests/test_model.py::test_save_and_load_give_identical_predictions",),
    ),
    Mutation(
        "RandomFlip left active at inference", "dogcat/model.py",
        "        layers.append(keras.layers.RandomFlip(config.flip, seed=seed, name=\"random_flip\"))",
        "        layers.append(keras.layers.RandomFlip(config.flip, seed=seed, name=\"random_flip\"))\n"
        "        layers[-1].call = lambda inputs, training=None, _call=layers[-1].call: _call(inputs, training=True)",
        ("tests/test_model.py::test_augmentation_is_off_at_inference",),
    ),
    Mutation(
        "cached trunk skips the [-1, 1] scaling", "dogcat/features.py",
        '    x = model.get_layer("to_mobilenet_range")(images)\n    trunk =',
        "    x = images\n    trunk =",
        ("tests/test_features.py::test_top_of_trunk_is_the_whole_model",
         "tests/test_features.py::test_training_the_top_on_cached_activations_equals_training_the_model"),
    ),
    Mutation(
        "detector used without checking its sha256 tie to the .keras", "dogcat/detector.py",
        "    if detector.keras_sha256 != file_sha256(model_path):",
        "    if False:",
        ("tests/test_detector.py::test_a_stale_or_missing_detector_means_cat_dog_verdicts_and_a_warning",),
    ),
    Mutation(
        "the ImageNet head ignored: every far photo is neither", "dogcat/detector.py",
        "        neither = (far & ~pet_seen) | (", "        neither = far | (",
        ("tests/test_detector.py::test_a_far_photo_is_neither_only_where_imagenet_sees_no_pet",
         "tests/test_detector.py::test_a_dog_unlike_the_training_photos_is_a_dog_and_a_tiger_is_neither"),
    ),
    Mutation(
        "the ImageNet head used without its sha256 tie to the detector", "dogcat/detector.py",
        "    if head.sha256 != detector.imagenet_sha256:",
        "    if False:",
        ("tests/test_detector.py::test_a_different_imagenet_head_is_refused_by_its_hash_with_one_warning",),
    ),
    Mutation(
        "the head's drift from ImageNet not checked", "dogcat/detector.py",
        "imagenet_agreement is not None and imagenet_agreement >= MIN_IMAGENET_AGREEMENT\n",
        "imagenet_agreement is not None\n",
        ("tests/test_detector.py::test_a_head_that_no_longer_reads_imagenet_is_not_used",),
    ),
    Mutation(
        "the head vouched for by agreement on a handful of photos", "dogcat/detector.py",
        "                  and len(val_features) >= MIN_AGREEMENT_PHOTOS)", "                  )",
        ("tests/test_detector.py::test_agreement_measured_on_too_few_validation_photos_does_not_vouch_for_the_head",),
    ),
    Mutation(
        "a detector with a NaN validation mean loads", "dogcat/detector.py",
        " and math.isfinite(b.val_mean) and", " and",
        ("tests/test_detector.py::test_a_tampered_detector_is_refused_before_use",),
    ),
    Mutation(
        "predict --csv's and batch's rows leave looks_like empty", "dogcat/verdict.py",
        "\"looks_like\": seen and seen.name,", "\"looks_like\": None,",
        ("tests/test_verdict.py::test_predict_json_and_csv_carry_the_verdict_and_size",
         "tests/test_batch.py::test_batch_on_a_cluster_gives_predicts_rows_and_an_error_row_per_bad_file"),
    ),
    Mutation(
        "a model's saved [predict] settings ignored", "dogcat/inference.py",
        "        settings = folder.predict_config(config_warnings)\n",
        "        settings = PredictConfig()\n",
        ("tests/test_verdict.py::test_the_models_saved_predict_settings_drive_its_verdicts",),
    ),
    Mutation(
        "an import circle: explain reads Prediction from inference again", "dogcat/explain.py",
        "    from dogcat.verdict import Prediction", "    from dogcat.inference import Prediction",
        ("tests/test_imports.py",),
    ),
    Mutation(
        "the Streamlit app hides what a photo looks like", "demos/streamlit_app.py",
        "    if prediction.hint:", "    if False:",
        ("tests/test_streamlit_app.py::test_shipped_model_says_neither_for_a_photo_of_neither",),
    ),
    Mutation(
        "the Gradio verdict without what it looks like", "demos/gradio_app.py",
        "    return result.sentence, result.probabilities, record, looked", "    return result.text, result.probabilities, record, looked",
        ("tests/test_space.py::test_space_of_an_exported_model_runs_without_keras_or_tensorflow",),
    ),
    # dogcat space build: a cloned Space's symlinks are never followed.
    Mutation(
        "space build deletes through a symlink its marker leads to", "dogcat/space.py",
        "    for name in previous:\n        _refuse_symlinks(out, name)\n", "",
        ("tests/test_space.py::test_a_marker_entry_through_a_symlinked_folder_deletes_nothing_outside",),
    ),
    Mutation(
        "space build writes through a symlinked folder", "dogcat/space.py",
        "        for name in written:\n            _refuse_symlinks(out, name)\n", "",
        ("tests/test_space.py::test_a_symlinked_folder_the_build_writes_into_is_refused[outside-unlisted]",),
    ),
    Mutation(
        "space build follows a symlink that stays inside the Space", "dogcat/space.py",
        "        if path.is_symlink():\n", "        if False:\n",
        ("tests/test_space.py::test_a_symlinked_folder_the_build_writes_into_is_refused[inside-listed]",),
    ),
    Mutation(
        "neither decided before too_small", "dogcat/verdict.py",
        "    if size is not None and min(size) < rules.min_side:\n        return TOO_SMALL\n"
        "    if is_neither:\n        return NEITHER\n",
        "    if is_neither:\n        return NEITHER\n"
        "    if size is not None and min(size) < rules.min_side:\n        return TOO_SMALL\n",
        ("tests/test_verdict.py::test_decide_gives_each_outcome_in_order",),
    ),
    Mutation(
        "detector threshold one rank off", "dogcat/detector.py",
        "[min(allowed, len(scores) - 1)]",
        "[min(allowed + 1, len(scores) - 1)]",
        ("tests/test_detector.py::test_the_thresholds_turn_away_the_chosen_shares_of_the_pets_out_of_fold",),
    ),
    Mutation(
        "detector thresholds set on in-sample distances, not out of fold", "dogcat/detector.py",
        "            distances[held_out] = _fit_block(name, part[~held_out], labels[~held_out])",
        "            distances[held_out] = _fit_block(name, part, labels)",
        ("tests/test_detector.py::test_the_thresholds_turn_away_the_chosen_shares_of_the_pets_out_of_fold",),
    ),
    Mutation(
        "no never-a-pet veto: a cougar near the cats is a cat", "dogcat/detector.py",
        "        neither = (far & ~pet_seen) | (probabilities[:, NEVER_PET].sum(axis=1) > self.info[\"never_pet_at\"])",
        "        neither = far & ~pet_seen",
        ("tests/test_detector.py::test_imagenet_vetoes_by_kind_never_by_a_class_pets_are_read_as",
         "tests/test_detector.py::test_a_cougar_called_a_cat_is_neither_and_says_why"),
    ),
    Mutation(
        "look-alikes (wolves, ferrets, lynx) never make a photo unsure", "dogcat/detector.py",
        "            unsure |= _margin_over_pets(probabilities, rows) > self.info[\"lookalike_at\"][kind]",
        "            pass",
        ("tests/test_detector.py::test_imagenet_vetoes_by_kind_never_by_a_class_pets_are_read_as",
         "tests/test_detector.py::test_a_far_pet_is_kept_by_a_lynx_reading_but_a_near_cougar_is_not"),
    ),
    Mutation(
        "the lynx no longer rescues a far photo", "dogcat/detector.py",
        'RESCUE = _head_rows("dog", "house_cat", wnids=(LYNX,))', 'RESCUE = _head_rows("dog", "house_cat")',
        ("tests/test_detector.py::test_a_far_pet_is_kept_by_a_lynx_reading_but_a_near_cougar_is_not",),
    ),
    Mutation(
        "looks_like shows ImageNet's own name (tiger cat for a tabby)", "dogcat/detector.py",
        "            seen.append(LooksLike(kind.readable_name,", "            seen.append(LooksLike(self.names[i],",
        ("tests/test_detector.py::test_looks_like_uses_everyday_names_and_keeps_the_imagenet_id",),
    ),
    Mutation(
        "neither does not say it is not a house cat", "dogcat/verdict.py",
        '        said += f", not {PET_NAMES[label]}"', "        pass",
        ("tests/test_verdict.py::test_neither_says_what_it_sees_when_imagenet_and_the_classifier_disagree",),
    ),
    Mutation(
        "the detector's doubt is not a verdict", "dogcat/verdict.py",
        "rules.unsure_below and not is_unsure else UNSURE", "rules.unsure_below else UNSURE",
        ("tests/test_detector.py::test_a_cougar_called_a_cat_is_neither_and_says_why",),
    ),
    Mutation(
        "int8 does not recheck what the detector doubts", "dogcat/inference.py",
        "            doubted |= judged.neither | judged.unsure", "            doubted |= judged.neither",
        ("tests/test_detector.py::test_int8_rechecks_what_the_detector_doubts_in_float32",),
    ),
    Mutation(
        "Image.open without the formats= list", "dogcat/preprocessing.py",
        "Image.open(io.BytesIO(data), formats=FORMATS)",
        "Image.open(io.BytesIO(data))",
        ("tests/test_preprocessing_limits.py::test_postscript_named_jpg_never_reaches_ghostscript",),
    ),
    Mutation(
        "no process-wide decode concurrency limit", "dogcat/preprocessing.py",
        "_DECODE_SLOTS = threading.BoundedSemaphore(DECODE_CONCURRENCY)",
        "_DECODE_SLOTS = threading.BoundedSemaphore(10**6)",
        ("tests/test_preprocessing_limits.py::test_concurrent_decodes_never_exceed_the_process_wide_limit",),
    ),
    Mutation(
        "Grad-CAM map without its ReLU", "dogcat/explain.py",
        "maps = np.maximum(np.einsum(\"nhwk,nkc->nhwc\", feature_map, alpha, optimize=True), 0)",
        "maps = np.einsum(\"nhwk,nkc->nhwc\", feature_map, alpha, optimize=True)",
        ("tests/test_explain.py::test_grad_cam_is_zero_where_nothing_speaks_for_the_class",
         "tests/test_explain.py::test_numpy_heatmap_is_the_autodiff_grad_cam"),
    ),
    # dogcat tune (needs the tune extra; `nox -s mutations` installs it).
    Mutation(
        "tune resume reruns the finished trials", "dogcat/tune.py",
        "        done = _count(study, TrialState.COMPLETE)\n", "        done = 0\n",
        ("tests/test_tune.py::test_resumed_search_runs_only_the_missing_trials",),
    ),
    Mutation(
        "tune resume replays the first session's proposals", "dogcat/tune.py",
        "default_rng([seed, len(study.trials)])", "default_rng([seed, 0])",
        ("tests/test_tune.py::test_resumed_search_runs_only_the_missing_trials",),
    ),
    Mutation(
        "tune never requeues an interrupted trial", "dogcat/tune.py",
        '    retried = {t.user_attrs.get("retry_of") for t in study.trials}\n', "    return\n",
        ("tests/test_tune.py::test_interrupted_trial_is_retried_with_its_parameters_and_finished_ones_are_not",
         "tests/test_tune.py::test_trial_left_running_by_a_killed_process_is_failed_and_retried"),
    ),
    Mutation(
        "tune retries an interrupted trial in a new run folder", "dogcat/tune.py",
        'folder = trial.user_attrs.get("run_dir", f"trials/{trial.number:04d}")', 'folder = f"trials/{trial.number:04d}"',
        ("tests/test_tune.py::test_interrupted_trial_is_retried_with_its_parameters_and_finished_ones_are_not",),
    ),
    Mutation(
        "tune sampler unseeded", "dogcat/tune.py",
        "optuna.samplers.TPESampler(seed=sampler_seed)", "optuna.samplers.TPESampler(seed=None)",
        ("tests/test_tune.py::test_same_seed_proposes_the_same_trials",),
    ),
    Mutation(
        "tune best.toml is the worst trial", "dogcat/tune.py",
        "best = min(complete, key=lambda t: t.value)", "best = max(complete, key=lambda t: t.value)",
        ("tests/test_tune.py::test_search_writes_one_row_per_trial_and_a_best_config_that_trains",),
    ),
    Mutation(
        "tune scores the uncalibrated val loss", "dogcat/tune.py",
        'val_loss = calibration["val_loss_after"] if calibration else metrics["val_loss"]', 'val_loss = metrics["val_loss"]',
        ("tests/test_tune.py::test_search_writes_one_row_per_trial_and_a_best_config_that_trains",),
    ),
    Mutation(
        "activation memo key ignores the rotation", "dogcat/features.py",
        "return [(*memo_key, view, *((config.flip, config.rotation, seed) if view else ())) for view in range(views)]",
        "return [(*memo_key, view, *((config.flip, seed) if view else ())) for view in range(views)]",
        ("tests/test_tune.py::test_trials_share_cached_views_and_train_as_without_them",),
    ),
    Mutation(
        "activation memo key ignores the seed", "dogcat/features.py",
        "return [(*memo_key, view, *((config.flip, config.rotation, seed) if view else ())) for view in range(views)]",
        "return [(*memo_key, view, *((config.flip, config.rotation) if view else ())) for view in range(views)]",
        ("tests/test_tune.py::test_trials_share_cached_views_and_train_as_without_them",),
    ),
    Mutation(
        "activation memo stores view 0 for every view", "dogcat/features.py",
        "memo[keys[view]] = cache[view].copy()", "memo[keys[view]] = cache[0].copy()",
        ("tests/test_tune.py::test_trials_share_cached_views_and_train_as_without_them",),
    ),
    Mutation(
        "the activation memo forgets the most recently read view", "dogcat/features.py",
        "        value = super().pop(key)\n        super().__setitem__(key, value)  # now the most recently used\n",
        "        value = super().__getitem__(key)\n",
        ("tests/test_tune.py::test_memo_forgets_the_least_recently_used_views_past_its_budget",),
    ),
    Mutation(
        "tune's trials share no activations", "dogcat/tune.py",
        "deployable=False, activation_memo=self.memo)", "deployable=False, activation_memo=None)",
        ("tests/test_tune.py::test_search_writes_one_row_per_trial_and_a_best_config_that_trains",),
    ),
    Mutation(
        "train(deployable=False) still exports and fits the detector", "dogcat/train.py",
        "    if deployable:\n", "    if True:\n",
        ("tests/test_tune.py::test_search_writes_one_row_per_trial_and_a_best_config_that_trains",),
    ),
    # Bulk work (needs the ray extra; `nox -s mutations` installs it).
    Mutation(
        "int8 re-scores no unsure photo in float32", "dogcat/inference.py",
        "doubted = scores.probabilities.max(axis=1) < runtimes.INT8_RECHECK_BELOW",
        "doubted = scores.probabilities.max(axis=1) < 0",
        ("tests/test_int8.py::test_int8_keeps_float32s_labels_accuracy_and_log_loss_on_real_photos",),
    ),
    Mutation(
        "int8's 'neither' is not judged again on float32's features", "dogcat/inference.py",
        "        if judged is not None:\n            doubted", "        if False:\n            doubted",
        ("tests/test_int8.py::test_int8_keeps_float32s_labels_accuracy_and_log_loss_on_real_photos",),
    ),
    Mutation(
        "batch re-runs files already in the output", "dogcat/batch.py",
        "todo = [path for path in found if printable(path) not in done]", "todo = found",
        ("tests/test_batch.py::test_batch_rerun_skips_done_files_and_sets_aside_a_cut_short_file",),
    ),
    Mutation(
        "batch drops the rows of unreadable files", "dogcat/batch.py",
        "        predictions = self.classifier.classify_decoded(*decode_files(batch, self.image_size))\n",
        "        predictions = [p for p in self.classifier.classify_decoded(*decode_files(batch, self.image_size)) if not p.error]\n",
        ("tests/test_batch.py::test_batch_on_a_cluster_gives_predicts_rows_and_an_error_row_per_bad_file",),
    ),
    Mutation(
        "auto falls back to Keras without a word", "dogcat/runtimes.py",
        'warning = f"{onnx}; using Keras instead, which is slower to start and to run" if folder.onnx().is_file() else None',
        "warning = None",
        ("tests/test_cli.py::test_auto_says_in_one_line_why_it_fell_back_to_keras",),
    ),
    Mutation(
        "predict --explain's folder checked only after classifying", "dogcat/cli.py",
        "    if args.explain is not None and args.explain.exists() and not args.explain.is_dir():",
        "    if False:",
        ("tests/test_cli.py::test_predict_explain_into_a_file_stops_before_any_work",),
    ),
    Mutation(
        "tune --cache-gib nan accepted", "dogcat/cli.py",
        "    if not (math.isfinite(args.cache_gib) and args.cache_gib >= 0):", "    if False:",
        ("tests/test_cli.py::test_tune_refuses_a_cache_size_that_is_not_a_number_in_one_line",),
    ),
    Mutation(
        "more head epochs than epochs accepted", "dogcat/config.py",
        "    if config.train.head_epochs > config.train.epochs:", "    if False:",
        ("tests/test_cli.py::test_more_head_epochs_than_epochs_is_refused_in_one_line",),
    ),
    Mutation(
        "a Ctrl-C during the ONNX Runtime load taken for a load failure", "dogcat/runtimes.py",
        "        if interrupt_requested():  # Ctrl-C during the load: never a reason to fall back to Keras\n",
        "        if False:\n",
        ("tests/test_cli.py::test_ctrl_c_during_the_onnx_load_is_an_interrupt_not_a_fallback",),
    ),
    Mutation(
        "Ctrl-C while parsing the command line leaves a traceback", "dogcat/cli.py",
        "    except KeyboardInterrupt:  # while parsing or importing, before _main's own handler is in place\n"
        "        return _interrupted()\n",
        "    finally:\n        pass\n",
        ("tests/test_cli.py::test_ctrl_c_at_any_moment_of_predict_exits_130_with_at_most_one_line",),
    ),
    Mutation(
        "Ctrl-C while the command installs its SIGINT handler leaves a traceback", "dogcat/cli.py",
        "    except KeyboardInterrupt:  # outside main's own handler: before it, or just after it returned\n",
        "    except ArithmeticError:\n",
        ("tests/test_cli.py::test_ctrl_c_while_the_command_installs_its_handler_exits_130_in_one_line",),
    ),
    Mutation(
        "an ONNX twin used without checking its own sha256", "dogcat/runtimes.py",
        "    damaged = checksum_problem(onnx_path)\n", "    damaged = None\n",
        ("tests/test_cli.py::test_an_onnx_twin_damaged_inside_its_weights_is_caught_by_its_own_sha256",),
    ),
    Mutation(
        "the Space card's snippet unpacks two outputs", "dogcat/card.py",
        "verdict, probabilities, result, heatmap = client.predict(", "verdict, probabilities = client.predict(",
        ("tests/test_space.py::test_the_cards_python_example_runs_against_the_served_space",),
    ),
    Mutation(
        "the Gradio probabilities keep a heading of their own", "demos/gradio_app.py",
        'label=PROBABILITIES_LABEL, show_heading=False)', 'label=PROBABILITIES_LABEL)',
        ("tests/test_gradio.py::test_the_probabilities_never_head_the_page",),
    ),
    Mutation(
        "the Gradio checkbox does not rerun the page", "demos/gradio_app.py",
        "    for event in (image_input.change, explain_input.change):",
        "    for event in (image_input.change,):",
        ("tests/test_gradio.py::test_the_page_classifies_on_arrival_and_on_the_checkbox_and_keeps_errors_in_view",),
    ),
    Mutation(
        "predict prints its rows only at the end", "dogcat/cli.py",
        "                    sys.stdout.flush()  # the rows so far reach a pipe now, not at the end\n"
        "                    done = next(batches)\n",
        "                    done = [p for batch in batches for p in batch]\n",
        ("tests/test_cli.py::test_predict_streams_its_rows_while_the_rest_are_still_being_classified",),
    ),
    Mutation(
        "missing files listed after the rest", "dogcat/data.py",
        "    return [(path, why) for path, why in listed\n", "    return [(path, why) for path, why in sorted(listed, key=lambda item: item[1] is not None)\n",
        ("tests/test_cli.py::test_missing_files_and_empty_globs_are_reported_once_in_their_place",),
    ),
    Mutation(
        "dogcat app hands a busy port to Streamlit", "dogcat/cli.py",
        "    _check_port_free(args.host, args.port)  #", "    pass  #",
        ("tests/test_cli.py::test_app_on_a_busy_port_says_to_pick_another_in_one_line",),
    ),
    Mutation(
        "dogcat demo shows Gradio's share=True hint", "demos/gradio_app.py",
        "        quiet=True,\n", "        quiet=False,\n",
        ("tests/test_gradio.py::test_cli_demo_serves_the_app",),
    ),
    # Decode memory: what the budget charges, the bands, the memory given back, the page's decodes.
    Mutation(
        "the decode budget leaves out WebP's decoder buffers", "dogcat/preprocessing.py",
        '_DECODER_PIXEL_BYTES = {"WEBP": 12,', '_DECODER_PIXEL_BYTES = {"WEBP": 0,',
        ("tests/test_preprocessing_limits.py::test_each_decode_path_holds_no_more_than_the_budget_charges",),
    ),
    Mutation(
        "the decode budget leaves out a progressive JPEG's coefficients", "dogcat/preprocessing.py",
        '    if image.format in _JPEG_FORMATS and image.info.get("progressive"):\n',
        "    if False:\n",
        ("tests/test_preprocessing_limits.py::test_a_progressive_jpeg_is_charged_its_full_size_coefficients",
         "tests/test_preprocessing_limits.py::test_each_decode_path_holds_no_more_than_the_budget_charges"),
    ),
    Mutation(
        "the decode budget charges the narrower way up of an EXIF-turned picture", "dogcat/preprocessing.py",
        "    return cost + max(_finish_cost(width, height, square, max_side), _finish_cost(height, width, square, max_side))",
        "    return cost + _finish_cost(width, height, square, max_side)",
        ("tests/test_preprocessing_limits.py::test_each_decode_path_holds_no_more_than_the_budget_charges",),
    ),
    Mutation(
        "the whole picture made RGB at once, not by bands", "dogcat/preprocessing.py",
        "_BAND_PIXELS = 2**18", "_BAND_PIXELS = 2**40",
        ("tests/test_preprocessing_limits.py::test_issue_23s_palette_png_costs_little_more_than_its_palette_bytes",),
    ),
    Mutation(
        "a large decode's freed memory kept in the threads' arenas", "dogcat/preprocessing.py",
        "_GIVE_BACK_FROM = 32 * 2**20", "_GIVE_BACK_FROM = 2**62",
        ("tests/test_preprocessing_limits.py::test_a_large_decodes_freed_memory_goes_back_to_the_os",),
    ),
    Mutation(
        "bands ignore the EXIF turn", "dogcat/preprocessing.py",
        "        turn = _TURNS.get(image.getexif().get(ExifTags.Base.Orientation, 1))\n", "        turn = None\n",
        ("tests/test_preprocessing_limits.py::test_the_banded_decode_gives_the_pixels_of_the_whole_picture",
         "tests/test_preprocessing.py::test_exif_orientation_gives_the_upright_picture"),
    ),
    Mutation(
        "a thumbnail's bands cut through its reduction blocks", "dogcat/preprocessing.py",
        "    for top, band in _rgb_bands(image, turn, multiple=factor_y):\n", "    for top, band in _rgb_bands(image, turn):\n",
        ("tests/test_preprocessing_limits.py::test_the_banded_decode_gives_the_pixels_of_the_whole_picture",),
    ),
    Mutation(
        "a sliver resized by rows where Pillow resizes it by columns", "dogcat/preprocessing.py",
        "    if _columns_first(width, height, square):\n        return _whole(", "    if False:\n        return _whole(",
        ("tests/test_preprocessing_limits.py::test_the_banded_decode_gives_the_pixels_of_the_whole_picture",),
    ),
    Mutation(
        "the Streamlit heatmap decodes the upload a third time", "demos/streamlit_app.py",
        "looked.image(overlay(preview, prediction.heatmap,", "looked.image(overlay(io.BytesIO(upload.data), prediction.heatmap,",
        ("tests/test_streamlit_app.py::test_with_the_heatmap_each_upload_is_decoded_once_for_the_model_and_once_for_both_pictures",),
    ),
    Mutation(
        "predict scores one batch at a time on ONNX Runtime", "dogcat/runtimes.py",
        "    return max(2, cores // max(1, runner.threads))\n", "    return 1\n",
        ("tests/test_inference.py::test_onnx_predict_scores_batches_on_every_core_at_once_in_input_order",),
    ),
    Mutation(
        "a call of fewer photos than a batch left on one thread", "dogcat/inference.py",
        "        size = max(1, math.ceil(min(self.batch_size, len(sources)) / (self.workers if self.runner.parallel else 1)))\n",
        "        size = self.batch_size\n",
        ("tests/test_inference.py::test_onnx_predict_scores_batches_on_every_core_at_once_in_input_order",),
    ),
    # dogcat batch on a cluster (the ray extra).
    Mutation(
        "batch reads s3:// URIs as local paths", "dogcat/batch.py",
        "        source = _read_uri(file) if _is_uri(file) else file\n", "        source = file\n",
        ("tests/test_batch.py::test_the_readmes_s3_example_reads_and_writes_a_bucket_resumes_and_retries",),
    ),
    Mutation(
        "a pool that ignores the CPU count: one whole-CPU actor per node", "dogcat/batch.py",
        "        return Plan(sum(max(1, int(c / unit)) for c in cpus), round(unit * SCORING_SHARE, 3), write_cpus, 1)",
        "        return Plan(len(cpus), 1.0, write_cpus, 1)",
        ("tests/test_batch.py::test_the_plan_gives_every_cpu_an_actor_and_leaves_room_to_write_whatever_the_nodes_size",),
    ),
    Mutation(
        "ONNX Runtime on every core in each actor", "dogcat/runtimes.py",
        "        options.intra_op_num_threads = threads\n", "",
        ("tests/test_batch.py::test_an_actor_runs_onnx_runtime_on_the_threads_it_was_given",),
    ),
    Mutation(
        "a retry that duplicates rows", "dogcat/batch.py",
        "    retried = drop_error_rows(out_dir, {printable(path) for path in found}, log) if retry_errors else 0\n    done = done_paths(out_dir, log)\n",
        "    retried = sum(bool(e) for _, errors in _output_files(out_dir, log).values() for e in errors) if retry_errors else 0\n"
        "    done = {p for rows, errors in _output_files(out_dir, log).values() for p, e in zip(rows, errors)\n"
        "            if not (e and retry_errors)}\n",
        ("tests/test_batch.py::test_retry_errors_classifies_error_rows_again_and_keeps_one_row_per_file",),
    ),
    Mutation(
        "a mistyped folder left for the job to find", "dogcat/batch.py",
        "    if missing:\n        raise DataError(", "    if False:\n        raise DataError(",
        ("tests/test_batch.py::test_a_mistyped_folder_or_an_unreachable_cluster_is_one_line_before_ray_starts",),
    ),
    Mutation(
        "an unreachable --address left to Ray's retries", "dogcat/batch.py",
        "    if address:\n        check_address(address)\n", "",
        ("tests/test_batch.py::test_a_mistyped_folder_or_an_unreachable_cluster_is_one_line_before_ray_starts",),
    ),
    Mutation(
        "one actor for the whole cluster", "dogcat/batch.py",
        "max_size=plan.actors, initial_size=plan.actors,", "max_size=1, initial_size=1,",
        ("tests/test_batch.py::test_batch_on_two_one_cpu_nodes_scores_on_both_and_gives_predicts_rows",),
    ),
    Mutation(
        "the Streamlit uploader takes JPEG and PNG only", "demos/streamlit_app.py",
        'UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)', 'UPLOAD_TYPES = ["jpg", "jpeg", "png"]',
        ("tests/test_streamlit_app.py::test_the_uploader_takes_every_format_the_cli_and_gradio_read",),
    ),
    Mutation(
        "the Streamlit summary filters nothing", "demos/streamlit_app.py",
        "        if (prediction.verdict or ERROR) in shown:\n", "        if True:\n",
        ("tests/test_streamlit_app.py::test_many_photos_get_a_summary_that_filters_them_and_short_headings",),
    ),
    Mutation(
        "ImageNet groups counted from the head's background output", "dogcat/imagenet_groups.py",
        "HEAD_OFFSET = 1  #", "HEAD_OFFSET = 0  #",
        ("tests/test_imagenet_groups.py::test_the_table_is_aligned_with_the_shipped_head_and_the_detector_ranges",),
    ),
    Mutation(
        "ImageNet's tiger cat grouped as a wild cat", "dogcat/imagenet_groups.tsv",
        "tiger cat\ttabby cat\thouse_cat", "tiger cat\ttabby cat\twild_cat",
        ("tests/test_imagenet_groups.py::test_pets_and_their_look_alikes_are_where_a_pet_owner_expects",),
    ),
    Mutation(
        "a missing extra's module is a traceback", "dogcat/cli.py",
        "(error := MissingDependency.of(error)) is None", "(error := None) is None",
        ("tests/test_errors.py::test_a_command_without_its_extra_names_the_extra_in_one_line",),
    ),
    Mutation(
        "evaluate on unreadable photos raises a bare ValueError", "dogcat/evaluate.py",
        "        raise DataError(f\"None of the", "        raise ValueError(f\"None of the",
        ("tests/test_errors.py::test_evaluate_on_photos_none_of_which_can_be_read_is_one_line",),
    ),
    Mutation(
        "the HTTP batcher never waits for company", "dogcat/serve.py",
        "            deadline = self._items[0][0] + self.wait_s\n", "            deadline = 0.0\n",
        ("tests/test_serve.py::test_the_batcher_gathers_requests_while_the_model_is_busy_up_to_max_batch",),
    ),
    Mutation(
        "the HTTP batcher waits even when idle", "dogcat/serve.py",
        "            while self._busy and len(self._items)", "            while len(self._items)",
        ("tests/test_serve.py::test_an_idle_batcher_sends_a_lone_request_without_waiting",),
    ),
    Mutation(
        "Ray Serve's default of 5 requests a replica", "dogcat/serve.py",
        '"max_ongoing_requests": 2 * max_batch,', '"max_ongoing_requests": 5,',
        ("tests/test_serve.py::test_a_ray_serve_replica_takes_a_full_batch_of_requests_at_once",),
    ),
    Mutation(
        "every refused upload is a 400", "dogcat/serve.py",
        "    if isinstance(error, ImageTooLarge):\n", "    if False:\n",
        ("tests/test_serve.py::test_every_refused_upload_has_its_status_and_stable_code",),
    ),
    Mutation(
        "the HTTP body limit trusts Content-Length alone", "dogcat/serve.py",
        "            if seen > self.limit:\n", "            if False:\n",
        ("tests/test_serve.py::test_a_body_over_the_limit_is_refused_while_it_streams_in",),
    ),
    Mutation(
        "the bearer token is not checked", "dogcat/serve.py",
        "        if token is None:\n            return\n", "        return\n",
        ("tests/test_serve.py::test_a_token_guards_the_api_but_not_the_health_checks",),
    ),
    Mutation(
        "ready before the warm-up photo", "dogcat/serve.py",
        "                self._submit = batcher.submit\n",
        "                self._submit = batcher.submit\n                self.ready = True\n",
        ("tests/test_serve.py::test_503_until_the_model_is_loaded_and_warm",),
    ),
    Mutation(
        "Ray Serve replicas load the Keras runtime whatever was asked", "dogcat/serve.py",
        "        return create_app(model, runtime, max_batch", "        return create_app(model, \"keras\", max_batch",
        ("tests/test_serve.py::test_ray_serve_answers_predicts_rows_and_sigterm_removes_the_deployment",),
    ),
    Mutation(
        "SIGTERM exits 143 as uvicorn re-raises it", "dogcat/serve.py",
        "                self._captured_signals.remove(sig)", "                pass",
        ("tests/test_serve.py::test_sigterm_drains_the_requests_in_flight_then_exits_0",),
    ),
    Mutation(
        "a copy of the model folder leaves its config.toml behind", "dogcat/model_folder.py",
        "                 CONFIG_FILENAME, *([INT8_ONNX_FILENAME]", "                 *([INT8_ONNX_FILENAME]",
        ("tests/test_model_folder.py",),
    ),
    Mutation(
        "evaluate --out writes a record no card reads", "dogcat/evaluate.py",
        "out_dir / TEST_RECORD_FILENAME", "out_dir / \"metrics.json\"",
        ("tests/test_model_folder.py::test_evaluate_out_into_the_model_folder_is_what_its_card_shows",),
    ),
    Mutation(
        "** follows links to folders again", "dogcat/data.py",
        "            matches = sorted(glob_paths(pattern))", "            matches = sorted(glob.glob(pattern, recursive=True))",
        # One link's 41 paths are one photo once listed (realpath dedupe): two links' 2^40 are what it breaks.
        ("tests/test_data.py::test_a_glob_over_two_links_to_the_same_folder_finishes",),
    ),
    Mutation(
        "a file named twice is listed twice", "dogcat/data.py",
        "            if why is not None or ((key := os.path.realpath(path)) not in seen and not seen.add(key))]",
        "            if why is not None or True]",
        ("tests/test_data.py::test_the_same_photo_by_relative_and_absolute_path_is_listed_once",),
    ),
    Mutation(
        "predict.batch_size without an upper bound", "dogcat/config.py",
        "lambda v: 1 <= v <= MAX_PREDICT_BATCH", "lambda v: 1 <= v",
        ("tests/test_inference.py::test_a_model_config_out_of_range_is_said_and_the_defaults_serve",),
    ),
    Mutation(
        "a non-finite probability becomes a verdict", "dogcat/verdict.py",
        "    if not np.isfinite(row).all() or (features is not None and not np.isfinite(features).all()):",
        "    if False:",
        ("tests/test_inference.py::test_a_non_finite_probability_is_an_error_row_and_json_stays_strict",),
    ),
    Mutation(
        "undecodable bytes of a name reach the output", "dogcat/printable.py",
        "    if \"\\udc80\" <= char <= \"\\udcff\":", "    if False:",
        ("tests/test_cli.py::test_a_file_name_that_is_not_utf8_is_written_as_printable_utf8",),
    ),
    Mutation(
        "Streamlit renders an upload's name as Markdown", "demos/streamlit_app.py",
        "        st.error(f\"{plain(upload.name)}: {plain(prediction.error)}\")",
        "        st.error(f\"{upload.name}: {prediction.error}\")",
        ("tests/test_streamlit_app.py::test_an_upload_name_is_shown_as_typed_never_as_markdown",),
    ),
    Mutation(
        "predict --json builds a row of its own", "dogcat/cli.py",
        "            row = result.as_row(names)\n",
        '            row = {"path": result.source, "verdict": result.verdict, "probabilities": result.probabilities}\n',
        ("tests/test_serve.py::test_predict_json_csv_and_the_api_give_one_row_with_the_same_keys_and_values",
         "tests/test_cli.py::test_predict_json_glob_and_missing_path"),
    ),
    Mutation(
        "the HTTP API adds a field of its own to the row", "dogcat/serve.py",
        "        row = prediction.as_row(self.classifier.class_names.values())\n",
        '        row = prediction.as_row(self.classifier.class_names.values()) | {"size": prediction.size}\n',
        ("tests/test_serve.py::test_predict_json_csv_and_the_api_give_one_row_with_the_same_keys_and_values",),
    ),
    Mutation(
        "the rows lose the looks-like ImageNet id and group", "dogcat/verdict.py",
        '"looks_like_id": seen and seen.imagenet_id, "looks_like_group": seen and seen.group,',
        '"looks_like_id": None, "looks_like_group": None,',
        ("tests/test_verdict.py::test_neither_says_what_it_sees_when_imagenet_and_the_classifier_disagree",),
    ),
    Mutation(
        "a second name for a one-photo verb comes back", "dogcat/inference.py",
        "    def probabilities(self, source: ImageSource) -> dict[str, float]:\n",
        "    classify_one = predict_one\n\n    def probabilities(self, source: ImageSource) -> dict[str, float]:\n",
        ("tests/test_inference.py::test_the_classifiers_docstring_lists_every_public_method_and_its_example_holds",),
    ),
    Mutation(
        "the Streamlit page starts from the default [predict] settings", "demos/streamlit_app.py",
        "ModelFolder.resolve(model_path).predict_config()  #", "ModelFolder.resolve(model_path).predict_config().__class__()  #",
        ("tests/test_consistency.py::test_the_streamlit_page_gives_the_classifiers_answers",),
    ),
]


def _copy_checkout(destination: Path) -> None:
    """The files git would see (tracked and untracked, not ignored): no .venv, no caches."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def run(mutation: Mutation, copy: Path) -> tuple[str, float]:
    """'caught' when the named tests fail; 'missed' when they pass; 'not applied' when the text is gone."""
    path = copy / mutation.file
    original = path.read_text()
    if original.count(mutation.old) != 1:
        return "not applied (text not found once; update this list)", 0.0
    path.write_text(original.replace(mutation.old, mutation.new))
    env = {**os.environ, "DOGCAT_SHARED_DATA": os.environ.get("DOGCAT_SHARED_DATA") or str(REPO.parent / "shared/data/kaggle-dogs-vs-cats-5k/train")}
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
                                cwd=copy, env=env, capture_output=True, text=True)
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - start
    outcome = {0: "MISSED", 1: "caught"}.get(result.returncode, f"error (pytest exit {result.returncode})")
    if result.returncode not in (0, 1):
        print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
    return outcome, seconds


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or any(n.lower() in m.name.lower() for n in names)]
    with tempfile.TemporaryDirectory(prefix="dogcat-mutations-") as folder:
        copy = Path(folder)
        _copy_checkout(copy)
        rows = []
        for mutation in chosen:
            outcome, seconds = run(mutation, copy)
            rows.append((mutation.name, mutation.file, outcome, seconds))
            print(f"{outcome:8} {seconds:5.0f}s  {mutation.name}", flush=True)
    width = max(len(name) for name, *_ in rows)
    print(f"\n| {'break':{width}} | file | result |\n|{'-' * (width + 2)}|------|--------|")
    for name, file, outcome, _ in rows:
        print(f"| {name:{width}} | {file} | {outcome} |")
    return 0 if all(outcome == "caught" for *_, outcome, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
