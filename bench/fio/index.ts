/**
 * FractOS fio: job-file parser, workload engine over `IoTarget`, fio-style text/JSON
 * reports, and real fio as the baseline. See docs/fio.md.
 */
export {
  parseJobFile,
  loadJobFile,
  parseSize,
  parseTimeMs,
  SUPPORTED_KEYS,
  DEFAULT_FIO_FILENAME,
  type FioJob,
  type FioRw,
  type ParseJobOptions,
} from './jobfile.js';
export {
  runJob,
  runJobs,
  FileTarget,
  type IoTarget,
  type FioProgress,
  type RunJobOptions,
  type FileTargetOptions,
} from './workload.js';
export {
  LatencyHistogram,
  FIO_PERCENTILES,
  PLAT_NR,
  bucketIndex,
  bucketValue,
  percentileKey,
  percentileOf,
  clatFromHistogram,
  buildDirStats,
  emptyDirStats,
  sampleStats,
  type ClatStats,
  type DirStats,
  type JobStats,
  type FioReport,
  type SampleStats,
} from './stats.js';
export {
  formatJobText,
  formatTextReport,
  toFioJson,
  parseFioJson,
  mergeDirStats,
  num2str,
  type FioJsonDir,
  type FioJsonLat,
  type FioJsonOptions,
} from './report.js';
export {
  runRealFio,
  fioVersion,
  hasRealFio,
  overrideJobText,
  compareRecords,
  formatCompareTable,
  type RealFioOptions,
  type RealFioResult,
  type FioBenchRecord,
  type CompareParams,
} from './realfio.js';
export {
  CpuMeter,
  procCpuNs,
  totalIos,
  fioJsonCpuNs,
  cpuPerIo,
  cpuRecord,
  formatCpuPerIo,
  type CpuProc,
  type CpuShare,
  type CpuPerIo,
} from './cpu.js';
