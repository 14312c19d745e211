import base64
import io

import numpy as np
from PIL import Image


def png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image.astype(np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def payload(images, task=None, tasks=None, **extra) -> dict:
    body = {"inputs": [{"image": png(im)} for im in images], **extra}
    if tasks is not None:
        body["tasks"] = tasks
    else:
        body["task"] = task
    return body
