"""Why a hub id could not be loaded: the hub unreachable, the id unknown there, or neither.

`from_pretrained` says "not cached locally" both when the Hugging Face hub can't be reached and when
the id does not exist; an operator needs to know which (fix the network, or fix the id). One small
request to the hub tells them apart. Runs in the worker process, after a load has failed.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

HUB_TIMEOUT = 10.0


def why_the_hub_failed(repo_id: str, *, endpoint: str | None = None, timeout: float = HUB_TIMEOUT) -> str | None:
    """What is wrong with fetching `repo_id` from the hub, in words for an operator; None if the hub has it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        HfApi(endpoint=endpoint).model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        return f"{repo_id} is gated on the Hugging Face hub: accept its terms there and set HF_TOKEN"
    except RepositoryNotFoundError:
        return f"the Hugging Face hub has no model {repo_id} (or it is private: then set HF_TOKEN)"
    except HFValidationError:
        return f"{repo_id} is neither a local folder nor a hub id like owner/name"
    except OfflineModeIsEnabled:
        return "HF_HUB_OFFLINE is set and the model is not in the local cache"
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "an error"
        return f"the Hugging Face hub answered {status} for {repo_id}; try again later"
    except Exception as error:  # connection refused, DNS, timeouts, TLS: whatever the HTTP client raises
        log.debug("the hub could not be reached", exc_info=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"the Hugging Face hub could not be reached ({reason}); check the network, or download the model"
    return None
