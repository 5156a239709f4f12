"""The test and benchmark lab, never shipped: processes and config files (``harness``), the load generator
(``loadgen``), /proc and metric-file scraping (``procs``, ``metrics``), record tracing (``tracing``), the fault lab
and its scenarios (``lab``, ``scenario``, ``scenarios``, ``faults``: ``python -m tests.support.faults``) and a
service that can be made slow (``faulty_service``)."""
