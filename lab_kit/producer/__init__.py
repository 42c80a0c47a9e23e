"""The asynchronous post producer, as a folder a reader opens one file at a time.

Start with :mod:`.async_producer`: ``AsyncPostProducer.submit`` hands a post to kafka-python's
``send`` and returns a future; two callbacks settle it. Then, as the lesson needs them:

* :mod:`.future`: ``PostFuture`` (what ``submit`` returns), ``Delivery`` (what it settles
  into), the set of posts in flight;
* :mod:`.failover`: the state machine ``SENDING → SPOOLING → REPLAYING → SENDING``, the health
  probe, spool and replay, the stuck-client check;
* :mod:`.spool`: the durable SQLite spool the failover writes to and replays from;
* :mod:`.dead_letters`: posts Kafka refuses for good go to ``posts.dlq`` (and the dead-letter
  record format, which the moderation stage writes too);
* :mod:`.callbacks`: delivery handlers for the lessons (collecting, logging, offloaded, slow,
  raising) and the two callback pitfalls as experiments;
* :mod:`.librdkafka`: ``client="confluent"``: librdkafka behind the same producer, its
  delivery reports served by a poll thread the lab owns, its errors mapped to kafka-python's;
* :mod:`.asyncio_bridge`: ``await`` a post's delivery from an event loop (the post API uses it);
* :mod:`.client_models`: notebook 11's experiments: which thread runs a callback in each client
  model (kafka-python, librdkafka, asyncio), and what a missing poll/flush or metadata costs;
* :mod:`.kafka_quirks`: kafka-python 3.0 behaviours worked around (used by moderation too);
* :mod:`.encoding`: post → record, with its validation fast path;
* :mod:`.partitioner`: kafka-python's key → partition rule, with each user's hash remembered;
* :mod:`.errors`: what ``submit`` and the futures raise.
"""

from lab_kit.producer.async_producer import (
    CLIENTS,
    LAB_DEFAULTS,
    MODES,
    ON_FULL_POLICIES,
    AsyncPostProducer,
    CloseReport,
)
from lab_kit.producer.errors import (
    BackpressureError,
    BrokerUnavailableError,
    DeliveryFailed,
    ProducerClosedError,
)
from lab_kit.producer.failover import State, api_versions_probe
from lab_kit.producer.future import Delivery, PostFuture
from lab_kit.producer.kafka_quirks import force_close

__all__ = [
    "CLIENTS", "LAB_DEFAULTS", "MODES", "ON_FULL_POLICIES", "AsyncPostProducer",
    "BackpressureError", "BrokerUnavailableError", "CloseReport", "Delivery", "DeliveryFailed",
    "PostFuture", "ProducerClosedError", "State", "api_versions_probe", "force_close",
]
