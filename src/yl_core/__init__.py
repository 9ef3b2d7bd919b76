"""The core every yl-status component shares: the MQTT contract (``protocol``), the truth
model (``truth``), configuration (``config``, ``checks``), the broker link (``link``), the
exception family (``errors``) and what a service process needs (``service``).

Light by rule: paho-mqtt, PyYAML and the standard library only; it never imports a
component (``publisher``, ``bridge``, ``status_app``, ``yl_status``).
"""
