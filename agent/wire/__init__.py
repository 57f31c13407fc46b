"""What crosses MQTT: versioned message models, topics, strict decoding, the MQTT client."""
