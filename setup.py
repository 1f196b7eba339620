"""
Packaging for cuckoodist.

The twistd plugin lives in C{twisted/plugins/}, which is a namespace shared
with Twisted itself: it must never get an C{__init__.py} and is listed by file
so that uninstalling cuckoodist removes only our plugin, not Twisted.
"""

from setuptools import find_packages, setup

setup(
    name="cuckoodist",
    version="0.1.0",
    description="A fault-tolerant AMQP pipeline between CRITs and Cuckoo sandboxes",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # The packages sit at the top of the checkout. Saying so makes an editable
    # install ("pip install -e .", as scripts/lib.sh does) put the checkout
    # itself on sys.path, where twistd finds twisted/plugins/ from any
    # directory; otherwise setuptools would map cuckoodist alone.
    package_dir={"": "."},
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks"]) + ["twisted.plugins"],
    # The dashboard's page, script and style sheet are served from the package.
    package_data={"cuckoodist.amqp": ["spec/*.xml"], "cuckoodist.dashboard": ["static/*"]},
    install_requires=[
        "Twisted[tls]>=24.7",
        "treq>=24.9",
        "txAMQP==0.8.2",
        "PyYAML>=6",
        "ijson>=3.2",
        "attrs>=23.1",
        "libarchive-c>=5.1",
        "prometheus_client>=0.16",
    ],
    entry_points={"console_scripts": ["cuckoodist = cuckoodist.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Security",
    ],
)
