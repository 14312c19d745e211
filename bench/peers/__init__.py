"""Peer servers for the comparison against the usual ways of serving a multi-task model.

Each peer serves the same extracted routes as Trunkline behind `POST /predict`, with the same
request body as `/v1/predict` (one task, a budget tier, base64 PNG images). They run in their
own virtual environments (`bench.peers.envs`) and import only `bench.peers.common` and
`models` from this repository.
"""
