"""TensorBoard HParams for a finished run, so the HParams dashboard compares the runs of a sweep.

Each run directory is one HParams *session*: it gets a session-start record with the run's config
values and a session-end record, in a new event file beside its scalars (not in a subdirectory, as
torch's SummaryWriter.add_hparams would put it, which splits one run in two). No experiment record
is written: with none, TensorBoard builds the experiment from all the sessions under --logdir, so
it knows which values differ across the sweep and lists those first. The dashboard's metric
columns are the sessions' scalar tags: the trainer logs the final metrics as `final/<tag>`.
"""

from __future__ import annotations

import time

# Bookkeeping keys, not hyperparameters: they change nothing a model learns.
NOT_HPARAMS = {"run.dir", "train.log_every", "train.checkpoint_every", "train.keep_last", "sample.length",
               "sample.prompt", "train.max_bad_steps"}
FINAL_PREFIX = "final/"


def hparams_of(config_dict: dict) -> dict[str, bool | float | int | str]:
    """The config's leaf values as dotted keys, in the types the HParams plugin knows.

    null values are left out (the plugin has no null; a run without the key shows an empty cell),
    lists become text like "[0.9, 0.999]".
    """
    from grutrain.config.schema import flatten_config

    return {name: str(list(value)) if isinstance(value, (list, tuple)) else value
            for name, value in flatten_config(config_dict).items()
            if value is not None and name not in NOT_HPARAMS}


def write_hparams(writer, config_dict: dict, *, status: str = "finished") -> None:
    """Write the run's HParams session (its config values) with a torch SummaryWriter of the run dir.

    status: the run's summary status; the HParams dashboard shows finished and failed sessions as such.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams_of(config_dict).items():
        # bool before int: isinstance(True, int) holds.
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = float(value)
        else:
            start.hparams[name].string_value = str(value)
    # The plugin has no "interrupted": such a session shows as unknown.
    end_status = {"finished": api_pb2.STATUS_SUCCESS, "failed": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
    end = plugin_data_pb2.SessionEndInfo(status=end_status, end_time_secs=time.time())

    def plugin_summary(tag: str, **data) -> Summary:
        content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**data))
        return Summary(value=[Summary.Value(tag=tag, metadata=content, tensor=metadata.NULL_TENSOR)])

    # The run's own event file (SummaryWriter.add_hparams would start a second run in a subdirectory).
    file_writer = writer._get_file_writer()
    file_writer.add_summary(plugin_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))
    file_writer.add_summary(plugin_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end))
