"""Detector → keypoints → embedder pipelines (the dog line's shape), as data in the registry.

- `spec`: a pipeline spec (`[pipelines.NAME]` in a registry file): its stages and crop rules;
- `yolo`: letterbox, and decoding of Ultralytics YOLO detection and pose ONNX outputs (with NMS);
- `runner`: the stages on ONNX Runtime sessions, image → detections, crops and embeddings;
- `scenes`: seeded photographs of reference cards on surfaces, with their boxes and corners;
- `build`: trains the reference detector and keypoint model with Ultralytics (only there);
- `convert`: `zoo convert --pipeline`, one output directory with the three stages and a manifest;
- `inspect`: `zoo pipeline run`, the product's full-pipeline check with its HTML page.
"""
