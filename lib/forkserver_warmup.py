"""Imported once by the short runs' fork server (`lib.adapter_runs.PRELOADED`, first): quiets the
libraries' import notes (the server writes to the notebook's stderr, and logger levels do not pass
from the chapter to the server), then loads the tokenizer of the model named in the server's
environment, so that each forked run finds it in `lib.model.PRELOADED_TOKENIZERS` instead of
spending about 6 s loading it.

A failure here only costs the saving: the server must start whatever happens, and a run whose
model cannot be loaded raises its own error, naming the model, when it loads it itself.
"""

import os

from .environment import quiet_library_logs

quiet_library_logs()  # before the imports below and the server's other preloads

from .adapter_runs import WARM_MODEL  # noqa: E402
from .model import PRELOADED_TOKENIZERS, load_tokenizer, resolve_model  # noqa: E402

if os.environ.get(WARM_MODEL):
    try:
        source = resolve_model(os.environ[WARM_MODEL])
        PRELOADED_TOKENIZERS[source.path_or_id] = load_tokenizer(source)
    except Exception:  # noqa: BLE001  (see the module docstring)
        pass
