"""
Stand-in for C{crits.services.connector}: CRITs' AMQP connector, over real
kombu, as the reference notes describe it: C{Connection(uri, **kwargs)} and
C{connect()}; C{send_msg} publishes through a topic C{Exchange} of the given
name (the default exchange when empty) with kombu's default serializer.
"""

from kombu import Connection, Exchange, Producer


class Connector(object):
    def __init__(self, connector, uri, **kwargs):
        if connector != "amqp":
            raise ValueError("unsupported connector %r" % (connector,))
        self.connector = connector
        self.uri = uri
        self.conn = Connection(uri, **kwargs)
        self.conn.connect()

    def send_msg(self, msg, exch, routing_key):
        exchange = Exchange(exch, type="topic")
        producer = Producer(self.conn, exchange=exchange)
        producer.publish(msg, routing_key=routing_key)

    def release(self):
        self.conn.release()
