"""Peer (b): LitServe with its dynamic batching.

python -m bench.peers.litserve_app PORT [--max-batch 64] [--wait-ms 2]
"""

from __future__ import annotations

import inspect

import litserve as ls

from bench.peers.common import PeerModel, parse_args


class MultiTaskAPI(ls.LitAPI):
    def setup(self, device) -> None:
        self.model = PeerModel(tasks=self.tasks, threads=self.threads)

    def decode_request(self, request):
        return self.model.decode(request)

    def batch(self, inputs):
        return inputs  # a list of (key, images); grouped by key in predict

    def predict(self, items):
        if isinstance(items, tuple):  # unbatched call (a batch of one)
            return self.model.run_mixed([items])[0]
        return self.model.run_mixed(items)

    def unbatch(self, outputs):
        return outputs

    def encode_response(self, output):
        return {"outputs": output}


def main() -> None:
    args = parse_args()
    batching = {"max_batch_size": args.max_batch, "batch_timeout": args.wait_ms / 1000}
    # LitServe moved the batching arguments from LitServer to LitAPI (0.2.x)
    if "max_batch_size" in inspect.signature(ls.LitAPI.__init__).parameters:
        api, server_args = MultiTaskAPI(**batching), {}
    else:
        api, server_args = MultiTaskAPI(), batching
    api.tasks, api.threads = args.tasks, args.threads
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, **server_args)
    server.run(port=args.port, host="127.0.0.1", log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
