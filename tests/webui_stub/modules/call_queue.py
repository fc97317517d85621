"""modules/call_queue.py: `queue_lock`, held by every generation (wrap_gradio_gpu_call) and by the API's
txt2img/img2img, so work that holds it cannot collide with them."""

from modules import fifo_lock

queue_lock = fifo_lock.FIFOLock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)

    return f
