"""Simulators for tests, benchmarks and the demo: a Meshtastic node (`node`) and
Open-Meteo (`weather`), both on 127.0.0.1. The daemon itself never imports them."""
