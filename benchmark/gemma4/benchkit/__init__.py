"""Modules the Gemma-4 benchmark scripts share; the scripts one folder up are thin command lines over them.

``tables`` (markdown tables) and ``outcome`` (failed / interrupted bookkeeping) serve any script; the ``ab_*``
modules are serve_ab.py's: workloads, servers and their logs, the engines' facts, the plan and pass protocol,
the bench_serving client, summary statistics, reports and merge. Device, date and commit: ``stamp`` (one
folder up, imported as the top-level module ``stamp`` by every script).
"""
