"""Pure logic of the kube_proxy module: model, names, renderers, live-state parsers.

Nothing in this package imports Ansible or touches the system; library/kube_proxy.py
runs the commands and hands their output here.
"""
