# codeindex: one image for every process of a fleet (worker, beat, api, flower, metrics).
# Build: docker build -t codeindex .   (docker-compose.yml builds it as codeindex:local)
FROM python:3.11-slim

# git: repositories by URL are cloned and read with the git command line;
# openssh-client: ssh:// repositories (CODEINDEX_GIT_SSH_KEY).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src
# torch from PyTorch's CPU index: the default index resolves the CUDA build (several GB);
# the model extra pins torch==2.13.0, whose CPU wheel this index serves.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu '.[model]' \
    && useradd --create-home --uid 10001 codeindex \
    && mkdir -p /data/repos /data/home \
    && chown -R codeindex:codeindex /data

USER codeindex
WORKDIR /home/codeindex
# A fleet worker's own disk (seed 002's volume per pod): its clones and caches, its metrics files.
ENV CODEINDEX_DATA_DIR=/data/repos \
    CODEINDEX_HOME=/data/home \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
ENTRYPOINT ["codeindex"]
CMD ["--help"]
