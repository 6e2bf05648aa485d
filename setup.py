"Packaging for dflab: every setting is read from settings.ini, the single source of truth."
from configparser import ConfigParser
import shlex
import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

expected = 'version description keywords author author_email lib_name license status min_python audience language git_url'.split()
for o in expected: assert o in cfg, f"missing expected setting: {o}"

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None))
reqs = lambda key: shlex.split(cfg.get(key, ''))

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title(),
                 'Programming Language :: Python :: 3'] + (['License :: ' + lic[1]] if lic[1] else []),
    url=cfg['git_url'],
    # experiment templates ship from nbs/experiments as dflab/experiment_templates/ (a data-only package), uncopied
    packages=setuptools.find_packages(include=['dflab', 'dflab.*']) + ['dflab.experiment_templates'],
    package_dir={'dflab.experiment_templates': 'nbs/experiments'},
    include_package_data=True,
    package_data={'dflab': ['assets/*', 'assets/**/*', 'configs/*', 'configs/**/*', 'weights/*'],
                  'dflab.experiment_templates': ['*.ipynb', '*.yaml']},
    install_requires=reqs('requirements'),
    # dev installs what the tests need: the docs builder and JupyterLab are tested (tests/test_browser.py)
    extras_require={'dev': reqs('dev_requirements') + reqs('docs_requirements') + reqs('lab_requirements'),
                    'docs': reqs('docs_requirements'), 'lab': reqs('lab_requirements')},
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
