#!/bin/bash
# The healthcheck docker-compose.yml runs in the kafka service, at apache/kafka's path: one
# ApiVersions round trip (the broker answers requests, not only accepts connections).
exec java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.xml -cp '/opt/kafka/libs/*' \
  org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
