"""The service's ``/metrics`` page, in Prometheus's text format (prometheus-client)."""

from __future__ import annotations

__all__ = ["Metrics"]


class Metrics:
    """Counters and gauges read from the service at each scrape, and the latency of ``/predict``."""

    def __init__(self, service):
        from prometheus_client import CollectorRegistry, Histogram

        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        self.predict_seconds = Histogram("streamtrain_predict_seconds", "Time to answer a /predict request.",
                                         registry=self.registry,
                                         buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))
        service.observe_predict = self.predict_seconds.observe

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.service.status()
        yield CounterMetricFamily("streamtrain_rows_received", "Rows taken from the source.",
                                  value=s["rows_received"])
        yield CounterMetricFamily("streamtrain_rows_trained", "Rows the model was updated on.", value=s["rows_trained"])
        yield CounterMetricFamily("streamtrain_rejected", "Requests or stream entries refused as bad input.",
                                  value=s["rows_rejected"])
        yield CounterMetricFamily("streamtrain_updates", "Updates of the model (batches).", value=s["updates"])
        yield GaugeMetricFamily("streamtrain_queue_rows", "Rows received and not yet trained on (the partial batch, "
                                "the shuffle buffer, the HTTP queue, the rows read ahead).", value=s["queue_rows"])
        lag = self.service.source.lag()
        if lag is not None:
            yield GaugeMetricFamily("streamtrain_source_lag", "Entries (files, requests, messages) the source holds "
                                    "beyond the position read (those read ahead, not yet trained, are in "
                                    "streamtrain_queue_rows; Redis 6: counted up to 100).", value=lag)
        for key in ("loss", "accuracy"):
            value = s["prequential"][key]
            if value is not None:
                yield GaugeMetricFamily(f"streamtrain_prequential_{key}", f"Mean {key} of every batch, scored before "
                                        "its update (progressive validation).", value=value)
        last = (s.get("validation") or {}).get("last") or {}
        for key in ("loss", "accuracy", "r2"):
            if last.get(key) is not None:
                yield GaugeMetricFamily(f"streamtrain_validation_{key}", f"The {key} of the held-out file (--val) at "
                                        "its latest scoring.", value=last[key])
        yield GaugeMetricFamily("streamtrain_step_seconds", "Mean seconds per update.", value=s["step_seconds"])
        if s["checkpoint_age_seconds"] is not None:
            yield GaugeMetricFamily("streamtrain_checkpoint_age_seconds", "Seconds since the last checkpoint.",
                                    value=s["checkpoint_age_seconds"])
        yield GaugeMetricFamily("streamtrain_model_version",
                                "The version of the model answering /predict (its updates, plus one per /reload).",
                                value=s["model_version"])
        yield GaugeMetricFamily("streamtrain_training", "1 while training runs, 0 after an error stopped it.",
                                value=float(s["training"]))
        yield GaugeMetricFamily("streamtrain_accepting", "1 while rows are taken in, 0 once the write-ahead log "
                                "cannot take posts (restart the service).", value=float(s["accepting"]))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
