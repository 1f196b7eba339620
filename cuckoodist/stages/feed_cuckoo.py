# -*- test-case-name: tests.test_stages -*-
"""
feed_cuckoo: upload a sample to one Cuckoo and hand the task on.

One instance feeds one Cuckoo; to add a Cuckoo, add a feed_cuckoo stage
for it.  Uploads wait (see L{CapacityGate}) while Cuckoo is full, so the
request stays in RabbitMQ, where another instance with room may take it.
"""

from typing import Any

from twisted.internet.defer import Deferred

from cuckoodist.amqp.consumer import Delivery, Outbox
from cuckoodist.messages import AnalysisRequest, TaskMessage
from cuckoodist.retry import retrying
from cuckoodist.stages.base import Stage, StageContext, describe
from cuckoodist.stages.capacity import CapacityGate

__all__ = ["FeedCuckoo"]


class FeedCuckoo(Stage):
    kind = "feed_cuckoo"

    def __init__(self, context: StageContext, stage_config: Any) -> None:
        super().__init__(context, stage_config)
        instance = context.config.cuckoo[stage_config.cuckoo]
        self.cuckoo = self.cuckoo_client(instance.url)
        self.gate = CapacityGate(
            self.cuckoo,
            context.reactor,
            stage_config.max_pending,
            stage_config.min_free_space if stage_config.check_free_space else None,
            stage_config.status_interval,
        )

    def stopService(self) -> Deferred:
        self.gate.stop()
        return super().stopService()

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        request = AnalysisRequest.decode(delivery.body)
        # Fail early, before using sandbox time, when results could not be delivered.
        self.crits_client(request.crits)
        ids = describe(request.crits)
        await self.gate.wait_for_room()
        task_id = await retrying(
            self.clock,
            lambda: self.cuckoo.submit(request.file_name, request.file_data, request.payload),
            f"upload {ids}",
        )
        self.log.info(
            "Submitted {name} ({size} bytes) as task {task} on {url} for analysis={analysis}",
            name=request.file_name,
            size=len(request.file_data),
            task=task_id,
            url=self.cuckoo.url,
            analysis=request.crits.analysis_id,
        )
        task = TaskMessage(
            task_id=task_id,
            cuckoo_url=self.cuckoo.url,
            crits=request.crits,
            submitted_at=self.clock.seconds(),
        )
        await outbox.publish(self.stage_config.producer_queue, task.encode())
