"""Modules the Gemma-4 benchmark scripts share; the scripts one folder up are thin command lines over them.

``tables`` (markdown tables) and ``outcome`` (failed / interrupted bookkeeping) serve any script; ``ab_*`` are
serve_ab.py's (workloads, servers and their logs, engines, plan, pass protocol, bench_serving client, video
client, summary, reports, merge); ``dp_*`` are decode_profile.py's sections (kernel families, floor, traces, reports, GPU run).
Device, date and commit: ``stamp`` one folder up, imported as the top-level module ``stamp`` by every script.
"""
